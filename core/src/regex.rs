//! The `regex` of edge and table rules: a small subset of regex syntax,
//! compiled to a Thompson NFA and run by a Pike VM, so matching is linear in
//! the value whatever the pattern (a header value cannot make it backtrack).
//! It replaces regex-lite in the wasm (about 42 KB there).
//!
//! The subset (README "Edge mode"): literals; `.` (any character but a
//! newline); classes `[a-z_]`, `[^0-9]`; `\d \w \s` and `\D \W \S` (ASCII, as
//! regex-lite's); escaped punctuation (`\.`, `\-`, `\/`) and `\n \r \t`;
//! groups `(…)` and `(?:…)`; alternation `|`; `*`, `+`, `?` and `{n}`,
//! `{n,}`, `{n,m}` with bounds up to 100 (a trailing `?`, lazy, is accepted;
//! it does not change whether a value matches); anchors `^` and `$` (the
//! whole value). Anything else (flags such as `(?i)`, look-around,
//! back-references, `\b`, Unicode classes `\p{…}`, POSIX classes) is refused
//! when the configuration or table is read, with the rule's field.
//! Like regex-lite's `is_match`, a pattern finds: anchor it for a full match.

#[allow(unused_imports)]
use crate::prelude::*;

/// Largest `{n,m}` bound.
pub const MAX_REPEAT: u32 = 100;
/// Most NFA instructions one pattern may compile to.
pub const MAX_PROGRAM: usize = 10_000;
/// Deepest group nesting.
const MAX_NESTING: usize = 32;

#[derive(Debug, Clone)]
enum Node {
    Empty,
    Char(char),
    Any,
    /// Inclusive ranges; `true`: negated.
    Class(Vec<(char, char)>, bool),
    Start,
    End,
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any,
    /// An index into `Regex::classes`.
    Class(u32),
    Split(u32, u32),
    Jmp(u32),
    Start,
    End,
    Match,
}

/// A compiled class: inclusive ranges, and whether it is negated.
type Class = (Box<[(char, char)]>, bool);

#[derive(Debug, Clone)]
pub struct Regex {
    program: Box<[Inst]>,
    classes: Box<[Class]>,
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

struct Parser<'p> {
    chars: core::iter::Peekable<core::str::Chars<'p>>,
    nesting: usize,
}

impl Parser<'_> {
    fn alternation(&mut self) -> Result<Node, &'static str> {
        let mut branches = vec![self.sequence()?];
        while self.chars.peek() == Some(&'|') {
            self.chars.next();
            branches.push(self.sequence()?);
        }
        Ok(if branches.len() == 1 { branches.pop().unwrap_or(Node::Empty) } else { Node::Alt(branches) })
    }

    fn sequence(&mut self) -> Result<Node, &'static str> {
        let mut items = Vec::new();
        while let Some(&c) = self.chars.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.repetition(atom)?);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    fn atom(&mut self) -> Result<Node, &'static str> {
        let Some(c) = self.chars.next() else { return Ok(Node::Empty) };
        Ok(match c {
            '(' => {
                if self.chars.peek() == Some(&'?') {
                    self.chars.next();
                    if self.chars.next() != Some(':') {
                        return Err("flags, named groups and look-around are not supported; (?:…) is");
                    }
                }
                self.nesting += 1;
                if self.nesting > MAX_NESTING {
                    return Err("groups nest too deeply (at most 32)");
                }
                let inner = self.alternation()?;
                if self.chars.next() != Some(')') {
                    return Err("unclosed group");
                }
                self.nesting -= 1;
                inner
            }
            ')' => return Err("unopened group"),
            '[' => self.class()?,
            '.' => Node::Any,
            '^' => Node::Start,
            '$' => Node::End,
            '\\' => self.escape(false)?,
            '*' | '+' | '?' | '{' => return Err("repetition operator missing expression"),
            c => Node::Char(c),
        })
    }

    /// After `\`: a character, or a class (`\d`) unless in a class range.
    fn escape(&mut self, in_class: bool) -> Result<Node, &'static str> {
        let Some(c) = self.chars.next() else { return Err("incomplete escape") };
        let class = |ranges: &[(char, char)], negated| Node::Class(ranges.to_vec(), negated);
        Ok(match c {
            'd' => class(DIGIT, false),
            'D' => class(DIGIT, true),
            'w' => class(WORD, false),
            'W' => class(WORD, true),
            's' => class(SPACE, false),
            'S' => class(SPACE, true),
            'n' => Node::Char('\n'),
            'r' => Node::Char('\r'),
            't' => Node::Char('\t'),
            c if c.is_ascii_punctuation() => Node::Char(c),
            _ if in_class => return Err("unsupported escape in a class"),
            _ => return Err("unsupported escape (\\b, \\p, \\x, back-references and the like are not supported)"),
        })
    }

    /// After `[`.
    fn class(&mut self) -> Result<Node, &'static str> {
        let negated = self.chars.peek() == Some(&'^');
        if negated {
            self.chars.next();
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.chars.next() else { return Err("unclosed class") };
            let low = match c {
                ']' if !first => break,
                '[' => return Err("nested classes and [:name:] are not supported"),
                '\\' => match self.escape(true)? {
                    Node::Char(c) => c,
                    Node::Class(set, false) => {
                        ranges.extend(set);
                        first = false;
                        continue;
                    }
                    _ => return Err("negated classes (\\D, \\W, \\S) are not supported inside a class"),
                },
                c => c,
            };
            first = false;
            let mut ahead = self.chars.clone();
            if ahead.next() == Some('-') && ahead.peek().is_some_and(|&n| n != ']') {
                self.chars.next();
                let high = match self.chars.next() {
                    Some('\\') => match self.escape(true)? {
                        Node::Char(c) => c,
                        _ => return Err("a class range ends in a class"),
                    },
                    Some('[') => return Err("nested classes and [:name:] are not supported"),
                    Some(c) => c,
                    None => return Err("unclosed class"),
                };
                if high < low {
                    return Err("a class range is backwards");
                }
                ranges.push((low, high));
            } else {
                ranges.push((low, low));
            }
        }
        Ok(Node::Class(ranges, negated))
    }

    fn repetition(&mut self, atom: Node) -> Result<Node, &'static str> {
        let (min, max) = match self.chars.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.chars.next();
                let min = self.number()?.ok_or("a repetition {n,m} needs n")?;
                let max = match self.chars.next() {
                    Some('}') => Some(min),
                    Some(',') => {
                        let max = self.number()?;
                        if self.chars.next() != Some('}') {
                            return Err("unclosed repetition {n,m}");
                        }
                        max
                    }
                    _ => return Err("unclosed repetition {n,m}"),
                };
                if max.is_some_and(|m| m < min) {
                    return Err("a repetition {n,m} has m below n");
                }
                return self.after_repetition(atom, min, max);
            }
            _ => return Ok(atom),
        };
        self.chars.next();
        self.after_repetition(atom, min, max)
    }

    fn after_repetition(&mut self, atom: Node, min: u32, max: Option<u32>) -> Result<Node, &'static str> {
        if matches!(atom, Node::Start | Node::End | Node::Empty) {
            return Err("repetition operator missing expression");
        }
        if self.chars.peek() == Some(&'?') {
            self.chars.next(); // lazy: the same matches
        }
        if let Some('*' | '+' | '?' | '{') = self.chars.peek() {
            return Err("a repetition of a repetition; use a group");
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    fn number(&mut self) -> Result<Option<u32>, &'static str> {
        let mut n: Option<u32> = None;
        while let Some(d) = self.chars.peek().and_then(|c| c.to_digit(10)) {
            self.chars.next();
            let v = n.unwrap_or(0) * 10 + d;
            if v > MAX_REPEAT {
                return Err("a repetition bound is over 100");
            }
            n = Some(v);
        }
        Ok(n)
    }
}

struct Compiler {
    program: Vec<Inst>,
    classes: Vec<Class>,
}

impl Compiler {
    fn pc(&self) -> u32 {
        self.program.len() as u32
    }

    fn push(&mut self, inst: Inst) -> Result<u32, &'static str> {
        if self.program.len() >= MAX_PROGRAM {
            return Err("the pattern is too large (repetitions multiply it)");
        }
        self.program.push(inst);
        Ok(self.pc() - 1)
    }

    fn patch(&mut self, at: u32, inst: Inst) {
        if let Some(slot) = self.program.get_mut(at as usize) {
            *slot = inst;
        }
    }

    fn node(&mut self, node: &Node) -> Result<(), &'static str> {
        match node {
            Node::Empty => {}
            Node::Char(c) => drop(self.push(Inst::Char(*c))?),
            Node::Any => drop(self.push(Inst::Any)?),
            Node::Start => drop(self.push(Inst::Start)?),
            Node::End => drop(self.push(Inst::End)?),
            Node::Class(ranges, negated) => {
                self.classes.push((ranges.clone().into_boxed_slice(), *negated));
                self.push(Inst::Class(self.classes.len() as u32 - 1))?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.node(item)?;
                }
            }
            Node::Alt(branches) => {
                // split L1, next; L1: branch; jmp end; next: split …
                let mut jumps = Vec::new();
                for (i, branch) in branches.iter().enumerate() {
                    if i + 1 < branches.len() {
                        let split = self.push(Inst::Match)?;
                        self.node(branch)?;
                        jumps.push(self.push(Inst::Match)?);
                        self.patch(split, Inst::Split(split + 1, self.pc()));
                    } else {
                        self.node(branch)?;
                    }
                }
                let end = self.pc();
                for j in jumps {
                    self.patch(j, Inst::Jmp(end));
                }
            }
            Node::Repeat(inner, min, max) => {
                for _ in 0..*min {
                    self.node(inner)?;
                }
                match max {
                    None => {
                        // loop: split body, end; body; jmp loop
                        let split = self.push(Inst::Match)?;
                        self.node(inner)?;
                        self.push(Inst::Jmp(split))?;
                        self.patch(split, Inst::Split(split + 1, self.pc()));
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Match)?);
                            self.node(inner)?;
                        }
                        let end = self.pc();
                        for s in splits {
                            self.patch(s, Inst::Split(s + 1, end));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A set of program counters in insertion order (a sparse set).
struct Threads {
    list: Vec<u32>,
    member: Vec<bool>,
}

impl Threads {
    fn new(n: usize) -> Self {
        Threads { list: Vec::with_capacity(n), member: vec![false; n] }
    }

    fn clear(&mut self) {
        for &pc in &self.list {
            if let Some(m) = self.member.get_mut(pc as usize) {
                *m = false;
            }
        }
        self.list.clear();
    }
}

impl Regex {
    /// Compiles `pattern`; the error says what in it is not supported.
    pub fn new(pattern: &str) -> Result<Regex, &'static str> {
        let mut parser = Parser { chars: pattern.chars().peekable(), nesting: 0 };
        let node = parser.alternation()?;
        if parser.chars.next().is_some() {
            return Err("unopened group");
        }
        let mut c = Compiler { program: Vec::new(), classes: Vec::new() };
        c.node(&node)?;
        c.push(Inst::Match)?;
        Ok(Regex { program: c.program.into_boxed_slice(), classes: c.classes.into_boxed_slice() })
    }

    /// Whether the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        let n = self.program.len();
        let (mut current, mut next) = (Threads::new(n), Threads::new(n));
        let mut stack = Vec::new();
        let mut pos = 0;
        let mut chars = text.chars();
        loop {
            // Unanchored: a new attempt starts at every position.
            self.add(&mut current, &mut stack, 0, pos == 0, pos == text.len());
            let c = chars.next();
            let after = pos + c.map_or(0, char::len_utf8);
            next.clear();
            for i in 0..current.list.len() {
                let pc = current.list.get(i).copied().unwrap_or(0);
                let step = match (self.program.get(pc as usize), c) {
                    (Some(Inst::Match), _) => return true,
                    (Some(Inst::Char(want)), Some(c)) => *want == c,
                    (Some(Inst::Any), Some(c)) => c != '\n',
                    (Some(Inst::Class(k)), Some(c)) => self.in_class(*k, c),
                    _ => false,
                };
                if step {
                    self.add(&mut next, &mut stack, pc + 1, false, after == text.len());
                }
            }
            if c.is_none() {
                return false;
            }
            core::mem::swap(&mut current, &mut next);
            pos = after;
        }
    }

    fn in_class(&self, k: u32, c: char) -> bool {
        self.classes
            .get(k as usize)
            .is_some_and(|(ranges, negated)| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
    }

    /// Adds `pc` and what it reaches without reading a character.
    fn add(&self, threads: &mut Threads, stack: &mut Vec<u32>, pc: u32, at_start: bool, at_end: bool) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            match threads.member.get_mut(pc as usize) {
                Some(m) if !*m => *m = true,
                _ => continue,
            }
            threads.list.push(pc);
            match self.program.get(pc as usize) {
                Some(Inst::Jmp(to)) => stack.push(*to),
                Some(Inst::Split(a, b)) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Some(Inst::Start) if at_start => stack.push(pc + 1),
                Some(Inst::End) if at_end => stack.push(pc + 1),
                _ => {}
            }
        }
    }
}
