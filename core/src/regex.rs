//! The `regex` of edge and table rules: a small subset of regex syntax,
//! compiled to a Thompson NFA and run by a Pike VM. It replaces regex-lite
//! in the wasm (about 42 KB there) and is tested against it: a pattern this
//! module accepts, regex-lite accepts too and answers the same on every
//! value (`regex_tests`, `tests/regex_vs_regex_lite.rs`, the
//! `regex_differential` fuzz target); one it reads otherwise is refused.
//!
//! The subset (docs/configuration.md, "The rule regex"): literals; `.` (any character but a
//! newline); classes `[a-z_]`, `[^0-9]` (a first `]` is literal, a `-` is
//! literal first, last or after a range; `--`, `&&` and `~~` are refused,
//! set operations elsewhere); `\d \w \s` and `\D \W \S` (ASCII, as
//! regex-lite's); escaped ASCII punctuation but `\<` and `\>` (word
//! boundaries elsewhere), and `\n \r \t`; groups `(…)` and `(?:…)`, at most
//! 10 deep; alternation `|`; `*`, `+`, `?` and `{n}`, `{n,}`, `{n,m}` with
//! bounds up to 100 (a trailing `?`, lazy, is accepted; it does not change
//! whether a value matches); anchors `^` and `$` (the whole value). Anything
//! else (flags such as `(?i)`, look-around, back-references, `\b`, Unicode
//! classes `\p{…}`, POSIX classes) is refused when the configuration or
//! table is read, with the rule's field. Like regex-lite's `is_match`, a
//! pattern finds: anchor it for a full match.
//!
//! **Bounded compile.** Every node the compiler visits is charged against
//! `BUDGET`: each atom, each class item, each instruction, and a repetition
//! charges its body's cost again for each copy past the first, whether the
//! body emits anything or not (`(?:x{0}){100}` costs some 300 visits, one
//! more such level 30,000: refused). The charge is made before the copies
//! are written, so a program holds at most `BUDGET` instructions and a
//! class `BUDGET` items, and compiling costs at most `O(pattern + BUDGET²)`
//! (sorting a class, moving a body to put a split before it). A repeat whose body matches only the empty
//! string emits nothing; one whose body can match empty anywhere needs no
//! minimum (`(?:a?){3,}` is `(?:a?)*`).
//!
//! **Linear matching.** The VM keeps the set of live instructions (a bitset
//! over the program) and advances all of them one character at a time;
//! an instruction enters a set at most once, and only then are the
//! instructions it reaches without reading (at most two) looked at. So each character costs
//! `O(program)` and a value of `n` characters `O(n × program)`, with
//! `program ≤ BUDGET`, whatever the pattern: nothing backtracks. A class is
//! a sorted, merged range list stored once and shared by every copy of it;
//! testing a character is a binary search. An anchored pattern (`^…`)
//! stops reading the value when no thread is left.

#[allow(unused_imports)]
use crate::prelude::*;

/// Largest `{n,m}` bound.
pub const MAX_REPEAT: u32 = 100;
/// What compiling one pattern may cost (see the module's doc); also the
/// most instructions a program holds.
pub const BUDGET: usize = 2_000;
/// Deepest group nesting. regex-lite refuses a tree over 50 deep, and each
/// group adds at most 4 levels (capture, alternation, concatenation,
/// repetition) to the 3 at the top: 3 + 4 × 10 stays under.
const MAX_NESTING: usize = 10;
/// The last Unicode scalar value.
const MAX_CHAR: u32 = 0x10_FFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inst {
    /// Reads one character in the ranges `Regex::ranges[from..to]`.
    Class(u32, u32),
    /// Continues at both (a jump when both are the same).
    Split(u32, u32),
    /// At the start of the value only.
    Start,
    /// At the end of the value only.
    End,
}
// The program's end (pc == program.len()) is the match.

#[derive(Debug, Clone)]
pub struct Regex {
    program: Box<[Inst]>,
    /// Every class's inclusive ranges as `low, high` pairs, each class
    /// sorted and merged.
    ranges: Box<[u32]>,
    /// The program starts with `^`: no thread starts after the first
    /// character.
    anchored: bool,
}

/// The VM's two thread sets and its stack, reused across matches (one per
/// VM) so a request allocates nothing; grown to the largest program run.
#[derive(Debug, Default)]
pub struct Scratch {
    words: Vec<u64>,
    /// Characters read, for tests of the early exit.
    #[cfg(test)]
    pub(crate) read: usize,
}

/// Ranges as `low, high` pairs.
type Set = &'static [u32];
const DIGIT: Set = &[0x30, 0x39];
const WORD: Set = &[0x30, 0x39, 0x41, 0x5a, 0x5f, 0x5f, 0x61, 0x7a];
const SPACE: Set = &[0x09, 0x0d, 0x20, 0x20];
const NEWLINE: Set = &[0x0a, 0x0a];

/// What follows a `\`.
enum Escaped {
    Char(char),
    /// A class, negated or not.
    Set(Set, bool),
}

type Res<T> = Result<T, &'static str>;

/// Parses and compiles in one pass: each atom is written at the program's
/// end; a repetition or alternation then puts splits before and copies
/// after what its operand wrote (`insert`, `copy` move the jumps).
struct Compiler<'p> {
    /// The pattern not read yet.
    rest: &'p str,
    program: Vec<Inst>,
    ranges: Vec<u32>,
    spent: usize,
    nesting: usize,
}

impl Compiler<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next();
        self.rest = chars.as_str();
        c
    }

    /// Reads `c` if it comes next.
    fn eat(&mut self, c: char) -> bool {
        let next = self.rest.starts_with(c);
        if next {
            self.next();
        }
        next
    }

    fn charge(&mut self, cost: usize) -> Res<()> {
        self.spent = self.spent.saturating_add(cost);
        if self.spent > BUDGET {
            return Err("the pattern is too large (repetitions multiply it)");
        }
        Ok(())
    }

    /// The next instruction's index.
    fn pc(&self) -> u32 {
        self.program.len() as u32
    }

    fn push(&mut self, inst: Inst) -> Res<()> {
        self.charge(1)?;
        self.program.push(inst);
        Ok(())
    }

    /// Puts `inst` before the operand written from `at` (to the end), whose
    /// jumps all land in it and so move by one.
    fn insert(&mut self, at: usize, inst: Inst) -> Res<()> {
        self.charge(1)?;
        for moved in self.program.get_mut(at..).unwrap_or_default() {
            if let Inst::Split(a, b) = moved {
                *a += 1;
                *b += 1;
            }
        }
        self.program.insert(at, inst);
        Ok(())
    }

    /// Appends a copy of the `len` instructions at `from`, jumps moved along.
    fn copy(&mut self, from: usize, len: usize) {
        let by = self.pc() - from as u32;
        for at in from..from + len {
            let inst = match self.program.get(at) {
                Some(&Inst::Split(a, b)) => Inst::Split(a + by, b + by),
                Some(&other) => other,
                None => break,
            };
            self.program.push(inst);
        }
    }

    fn set(&mut self, at: u32, inst: Inst) {
        if let Some(slot) = self.program.get_mut(at as usize) {
            *slot = inst;
        }
    }

    /// `a|b|…` up to a `)` or the end; whether it can match empty. Laid
    /// out as: split a, next; a; jump end; next: split b, …; last branch.
    fn alternation(&mut self) -> Res<bool> {
        let mut branch = self.pc();
        let mut nullable = self.sequence()?;
        let mut jumps = Vec::new();
        while self.eat('|') {
            self.insert(branch as usize, Inst::Start)?; // the split, set below
            jumps.push(self.pc());
            self.push(Inst::Start)?; // the jump, set below
            self.set(branch, Inst::Split(branch + 1, self.pc()));
            branch = self.pc();
            nullable |= self.sequence()?;
        }
        let end = self.pc();
        for jump in jumps {
            self.set(jump, Inst::Split(end, end));
        }
        Ok(nullable)
    }

    fn sequence(&mut self) -> Res<bool> {
        let mut nullable = true;
        while self.peek().is_some_and(|c| c != '|' && c != ')') {
            let (start, spent) = (self.program.len(), self.spent);
            let atom = self.atom()?;
            nullable &= self.repetition(atom, start, spent)?;
        }
        Ok(nullable)
    }

    /// One atom: `None` for an anchor (which cannot be repeated), else
    /// whether it can match empty wherever it is (an anchor cannot).
    fn atom(&mut self) -> Res<Option<bool>> {
        self.charge(1)?;
        let c = match self.next() {
            Some('(') => return self.group().map(Some),
            Some('[') => return self.class().map(|()| Some(false)),
            Some('^') => return self.push(Inst::Start).map(|()| None),
            Some('$') => return self.push(Inst::End).map(|()| None),
            Some('.') => return self.class_of(NEWLINE, true).map(|()| Some(false)),
            Some('*' | '+' | '?' | '{') => return Err("repetition operator missing expression"),
            Some('\\') => match self.escape()? {
                Escaped::Set(set, negated) => return self.class_of(set, negated).map(|()| Some(false)),
                Escaped::Char(c) => c,
            },
            Some(c) => c,
            None => return Ok(Some(true)),
        };
        self.class_of(&[c as u32, c as u32], false)?;
        Ok(Some(false))
    }

    /// After `(`.
    fn group(&mut self) -> Res<bool> {
        if self.eat('?') && self.next() != Some(':') {
            return Err("flags, named groups and look-around are not supported; (?:…) is");
        }
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err("groups nest too deeply (at most 10)");
        }
        let nullable = self.alternation()?;
        if self.next() != Some(')') {
            return Err("unclosed group");
        }
        self.nesting -= 1;
        Ok(nullable)
    }

    /// After `\`.
    fn escape(&mut self) -> Res<Escaped> {
        let set = |set, negated| Ok(Escaped::Set(set, negated));
        match self.next() {
            Some('d') => set(DIGIT, false),
            Some('D') => set(DIGIT, true),
            Some('w') => set(WORD, false),
            Some('W') => set(WORD, true),
            Some('s') => set(SPACE, false),
            Some('S') => set(SPACE, true),
            Some('n') => Ok(Escaped::Char('\n')),
            Some('r') => Ok(Escaped::Char('\r')),
            Some('t') => Ok(Escaped::Char('\t')),
            // `\<` and `\>` are word boundaries in regex-lite.
            Some(c) if c.is_ascii_punctuation() && c != '<' && c != '>' => Ok(Escaped::Char(c)),
            Some(_) => Err("unsupported escape (\\b, \\<, \\p, \\x, back-references and the like are not supported)"),
            None => Err("incomplete escape"),
        }
    }

    /// Whether a range's `-` comes next: a `-` before `]` or `-` is not one.
    fn range_follows(&self) -> bool {
        let b = self.rest.as_bytes();
        b.first() == Some(&b'-') && !matches!(b.get(1), Some(b']' | b'-'))
    }

    /// After `[`.
    fn class(&mut self) -> Res<()> {
        let negated = self.eat('^');
        let mut set = Vec::new();
        // A first `]` is literal (an empty class cannot be written).
        if self.eat(']') {
            set.extend_from_slice(&[0x5d, 0x5d]);
        }
        loop {
            self.charge(1)?;
            let low = match self.next() {
                Some(']') => break,
                Some('[') => return Err("nested classes and [:name:] are not supported"),
                Some(c @ ('-' | '&' | '~')) if self.peek() == Some(c) => {
                    return Err("--, && and ~~ in a class are not supported")
                }
                Some('\\') => match self.escape()? {
                    Escaped::Char(c) => c,
                    Escaped::Set(_, true) => return Err("\\D, \\W and \\S are not supported in a class"),
                    Escaped::Set(s, false) => {
                        if self.range_follows() {
                            return Err("a class range starts or ends in a class");
                        }
                        set.extend_from_slice(s);
                        continue;
                    }
                },
                Some(c) => c,
                None => return Err("unclosed class"),
            };
            let mut high = low;
            if self.range_follows() {
                self.next();
                high = match self.next() {
                    Some('\\') => match self.escape()? {
                        Escaped::Char(c) => c,
                        Escaped::Set(..) => return Err("a class range starts or ends in a class"),
                    },
                    Some('[') => return Err("nested classes and [:name:] are not supported"),
                    Some(c) => c,
                    None => return Err("unclosed class"),
                };
                if high < low {
                    return Err("a class range is backwards");
                }
            }
            set.extend_from_slice(&[low as u32, high as u32]);
        }
        self.class_of(&set, negated)
    }

    /// Writes a class of `set` (`low, high` pairs), sorted and merged (then
    /// complemented if `negated`) once, and an instruction naming it.
    fn class_of(&mut self, set: &[u32], negated: bool) -> Res<()> {
        // Pairs by (low, index), each after the last taken: a selection
        // sort, O(items²) with at most `BUDGET` items (each is charged).
        let mut merged: Vec<u32> = Vec::with_capacity(set.len());
        let mut taken: Option<(u32, usize)> = None;
        loop {
            let mut first: Option<(u32, usize, u32)> = None;
            for (i, pair) in set.chunks_exact(2).enumerate() {
                if let [low, high] = *pair {
                    let key = Some((low, i));
                    if key > taken && first.is_none_or(|(l, j, _)| (low, i) < (l, j)) {
                        first = Some((low, i, high));
                    }
                }
            }
            let Some((low, i, high)) = first else { break };
            taken = Some((low, i));
            match merged.last_mut() {
                Some(last) if low <= *last + 1 => *last = high.max(*last),
                _ => merged.extend_from_slice(&[low, high]),
            }
        }
        let from = self.ranges.len() as u32;
        if negated {
            let mut next = 0;
            for pair in merged.chunks_exact(2) {
                if let [low, high] = *pair {
                    if low > next {
                        self.ranges.extend_from_slice(&[next, low - 1]);
                    }
                    next = high + 1;
                }
            }
            if next <= MAX_CHAR {
                self.ranges.extend_from_slice(&[next, MAX_CHAR]);
            }
        } else {
            self.ranges.extend_from_slice(&merged);
        }
        self.push(Inst::Class(from, self.ranges.len() as u32))
    }

    /// A repetition operator after `atom`, which was written from `start`
    /// and cost `spent_before..spent`; whether the result can match empty.
    fn repetition(&mut self, atom: Option<bool>, start: usize, spent_before: usize) -> Res<bool> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.next();
                let min = self.number()?.ok_or("a repetition {n,m} needs n")?;
                let max = match self.peek() {
                    Some('}') => Some(min),
                    Some(',') => {
                        self.next();
                        self.number()?
                    }
                    _ => return Err("unclosed repetition {n,m}"),
                };
                if self.peek() != Some('}') {
                    return Err("unclosed repetition {n,m}");
                }
                if max.is_some_and(|m| m < min) {
                    return Err("a repetition {n,m} has m below n");
                }
                (min, max)
            }
            _ => return Ok(atom == Some(true)),
        };
        self.next();
        let Some(nullable) = atom else { return Err("repetition operator missing expression") };
        self.eat('?'); // lazy: the same matches
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
            return Err("a repetition of a repetition; use a group");
        }
        // A body that matches empty anywhere needs no minimum.
        let min = if nullable { 0 } else { min };
        // The body was charged once as it was read: each copy past the
        // first costs it again (nothing more for none at all).
        let copies = max.unwrap_or(min.max(1));
        self.charge((self.spent - spent_before).saturating_mul(copies.saturating_sub(1) as usize))?;
        // The body, written from `start`, is the first copy.
        let len = self.program.len() - start;
        if len == 0 {
            return Ok(true);
        }
        let step = len as u32 + 1;
        match max {
            Some(0) => self.program.truncate(start),
            None if min == 0 => {
                // split body, end; body; split body, end
                let (body, end) = (start as u32 + 1, start as u32 + 1 + step);
                self.insert(start, Inst::Split(body, end))?;
                self.push(Inst::Split(body, end))?;
            }
            None => {
                // body (min - 1 times); body; split the last, next
                for _ in 1..min {
                    self.copy(start, len);
                }
                let last = self.pc() - len as u32;
                self.push(Inst::Split(last, last + step))?;
            }
            Some(max) => {
                // body (min times), then for each optional copy: split
                // next, end; body. With no minimum the first is optional.
                let mut from = start;
                let optional = if min == 0 {
                    from += 1;
                    let end = from as u32 + len as u32 + (max - 1) * step;
                    self.insert(start, Inst::Split(from as u32, end))?;
                    max - 1
                } else {
                    max - min
                };
                for _ in 1..min {
                    self.copy(from, len);
                }
                let end = self.pc() + optional * step;
                for _ in 0..optional {
                    self.push(Inst::Split(self.pc() + 1, end))?;
                    self.copy(from, len);
                }
            }
        }
        Ok(min == 0)
    }

    fn number(&mut self) -> Res<Option<u32>> {
        let mut n: Option<u32> = None;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            self.next();
            let v = n.unwrap_or(0) * 10 + d;
            if v > MAX_REPEAT {
                return Err("a repetition bound is over 100");
            }
            n = Some(v);
        }
        Ok(n)
    }
}

impl Regex {
    /// Compiles `pattern`; the error says what in it is not supported.
    pub fn new(pattern: &str) -> Result<Regex, &'static str> {
        let mut c = Compiler { rest: pattern, program: Vec::new(), ranges: Vec::new(), spent: 0, nesting: 0 };
        c.alternation()?;
        if !c.rest.is_empty() {
            return Err("unopened group");
        }
        Ok(Regex {
            anchored: c.program.first() == Some(&Inst::Start),
            program: c.program.into_boxed_slice(),
            ranges: c.ranges.into_boxed_slice(),
        })
    }

    /// Whether the pattern matches anywhere in `text` (allocates its own
    /// scratch: the request path passes one, `is_match_with`).
    pub fn is_match(&self, text: &str) -> bool {
        self.is_match_with(text, &mut Scratch::default())
    }

    /// `is_match` with the VM's `scratch`.
    pub fn is_match_with(&self, text: &str, scratch: &mut Scratch) -> bool {
        // A set has one bit per instruction and one for the end (the
        // match); the stack one entry per instruction and the end.
        let words = self.program.len() / 64 + 1;
        let needed = 2 * words + self.program.len() + 1;
        if scratch.words.len() < needed {
            scratch.words = vec![0; needed];
        }
        let Some((mut now, rest)) = scratch.words.split_at_mut_checked(words) else { return false };
        let Some((mut next, stack)) = rest.split_at_mut_checked(words) else { return false };
        now.fill(0);
        next.fill(0);
        let mut chars = text.chars();
        let mut at = 0;
        loop {
            // Unanchored: a new attempt starts at every position.
            if (at == 0 || !self.anchored) && self.add(now, stack, 0, at == 0, at == text.len()) {
                return true;
            }
            let Some(c) = chars.next() else { return false };
            #[cfg(test)]
            {
                scratch.read += 1;
            }
            at += c.len_utf8();
            for (w, &word) in now.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let pc = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let Some(&Inst::Class(from, to)) = self.program.get(pc) {
                        if self.in_class(from, to, c) && self.add(next, stack, pc as u32 + 1, false, at == text.len()) {
                            return true;
                        }
                    }
                }
            }
            if self.anchored && next.iter().all(|&w| w == 0) {
                return false;
            }
            now.fill(0);
            core::mem::swap(&mut now, &mut next);
        }
    }

    /// A binary search of the class's `low, high` pairs for the first
    /// whose `high` is `c` or above.
    fn in_class(&self, from: u32, to: u32, c: char) -> bool {
        let c = c as u32;
        let ranges = self.ranges.get(from as usize..to as usize).unwrap_or_default();
        let (mut low, mut high) = (0, ranges.len() / 2);
        while low < high {
            let mid = (low + high) / 2;
            if ranges.get(2 * mid + 1).is_some_and(|&end| end < c) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        ranges.get(2 * low).is_some_and(|&start| start <= c)
    }

    /// Adds `pc` to `set` with what it reaches without reading a character;
    /// whether that reaches the end (a match). An instruction is marked
    /// when first reached and only then stacked: each once, so `stack`
    /// needs one entry per instruction (and the end).
    fn add(&self, set: &mut [u64], stack: &mut [u64], pc: u32, at_start: bool, at_end: bool) -> bool {
        let mut top = 0;
        reach(set, stack, &mut top, pc);
        while top > 0 {
            top -= 1;
            let pc = stack.get(top).map_or(0, |&pc| pc as u32);
            match self.program.get(pc as usize) {
                None => return true,
                Some(&Inst::Split(a, b)) => {
                    reach(set, stack, &mut top, a);
                    reach(set, stack, &mut top, b);
                }
                Some(Inst::Start) if at_start => reach(set, stack, &mut top, pc + 1),
                Some(Inst::End) if at_end => reach(set, stack, &mut top, pc + 1),
                _ => {}
            }
        }
        false
    }
}

/// Marks `pc` in `set`; if it was not, stacks it.
fn reach(set: &mut [u64], stack: &mut [u64], top: &mut usize, pc: u32) {
    let bit = 1u64 << (pc % 64);
    match set.get_mut((pc / 64) as usize) {
        Some(word) if *word & bit == 0 => *word |= bit,
        _ => return,
    }
    if let Some(slot) = stack.get_mut(*top) {
        *slot = u64::from(pc);
        *top += 1;
    }
}
