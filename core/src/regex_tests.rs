//! The rule regex against regex-lite (the engine it replaces): the same
//! answer on every pattern of the subset and every input here, and patterns
//! outside the subset refused.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::regex::{Regex, Scratch};

const PATTERNS: &[&str] = &[
    "",
    "a",
    "^dev-[a-z]+$",
    "dev-[0-9]+",
    "^qa$",
    "blue",
    "^(alice|bob)$",
    "a|b|",
    "^a*$",
    "^(a|b)*c",
    "^[^0-9]+$",
    "^[-a]+$",
    "^[a-]+$",
    "^[]a]+$",
    "^\\d{2,4}$",
    "^\\w+@\\w+\\.com$",
    "\\s",
    "^\\S+$",
    "^\\D\\W$",
    "^a{3}$",
    "^a{2,}$",
    "^(ab){1,2}$",
    "^a+?b??$",
    "x.y",
    "^.$",
    "^(?:team|qa)-\\d+$",
    "^$",
    "a$|^b",
    "^((a*)*)*$",
    "^(a?){5}a{5}$",
    "[\\d\\-_]+",
    "^\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\^\\$\\\\\\/$",
    "é+",
    "^[α-ω]+$",
    "\\t|\\n|\\r",
    "^(a|ab)(c|bcd)(d*)$",
];

const INPUTS: &[&str] = &[
    "",
    "a",
    "b",
    "c",
    "ab",
    "abc",
    "aaa",
    "aaaaa",
    "aaaaaaaaaa",
    "ababc",
    "abcd",
    "dev-",
    "dev-abc",
    "dev-12",
    "x-dev-7-y",
    "qa",
    " qa",
    "blue-ish",
    "alice",
    "bob",
    "alicebob",
    "12",
    "12345",
    "1234",
    "me@host.com",
    "a b",
    "tab\there",
    "x\ny",
    "xzy",
    "é",
    "éé",
    "αβγ",
    "team-42",
    "qa-",
    ".*+?()[]{}|^$\\/",
    "-_-",
    "]a]",
    "a-a",
    "%$#",
];

#[test]
fn agrees_with_regex_lite() {
    for pattern in PATTERNS {
        let ours = Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
        let theirs = regex_lite::Regex::new(pattern).unwrap();
        for input in INPUTS {
            assert_eq!(ours.is_match(input), theirs.is_match(input), "{pattern:?} on {input:?}");
        }
    }
}

#[test]
fn outside_the_subset_is_refused() {
    let cases = [
        ("(", "unclosed group"),
        (")", "unopened group"),
        ("a)", "unopened group"),
        ("[a", "unclosed class"),
        ("[z-a]", "a class range is backwards"),
        ("[[:alpha:]]", "nested classes and [:name:] are not supported"),
        ("(?i)abc", "flags, named groups and look-around are not supported; (?:…) is"),
        ("(?=a)", "flags, named groups and look-around are not supported; (?:…) is"),
        ("(?P<n>a)", "flags, named groups and look-around are not supported; (?:…) is"),
        ("\\bword", "unsupported escape (\\b, \\<, \\p, \\x, back-references and the like are not supported)"),
        ("\\p{L}", "unsupported escape (\\b, \\<, \\p, \\x, back-references and the like are not supported)"),
        ("(a)\\1", "unsupported escape (\\b, \\<, \\p, \\x, back-references and the like are not supported)"),
        ("a\\", "incomplete escape"),
        ("*a", "repetition operator missing expression"),
        ("a|*", "repetition operator missing expression"),
        ("^*", "repetition operator missing expression"),
        ("a**", "a repetition of a repetition; use a group"),
        ("a{101}", "a repetition bound is over 100"),
        ("a{3,2}", "a repetition {n,m} has m below n"),
        ("a{,2}", "a repetition {n,m} needs n"),
        ("a{2", "unclosed repetition {n,m}"),
        ("((((a{100}){100}){100}){100})", "the pattern is too large (repetitions multiply it)"),
        (&"(".repeat(11), "groups nest too deeply (at most 10)"),
        ("\\<admin", "unsupported escape (\\b, \\<, \\p, \\x, back-references and the like are not supported)"),
        ("[--z]", "--, && and ~~ in a class are not supported"),
        ("[\\d-z]", "a class range starts or ends in a class"),
        ("[a-\\d]", "a class range starts or ends in a class"),
        ("[\\D]", "\\D, \\W and \\S are not supported in a class"),
    ];
    for (pattern, want) in cases {
        assert_eq!(Regex::new(pattern).err(), Some(want), "{pattern:?}");
    }
}

/// Linear: a pattern that makes a backtracker take exponential time answers
/// a long value (the test would not finish otherwise).
#[test]
fn no_backtracking() {
    let re = Regex::new("^(a|a)*(a*)*b$").unwrap();
    assert!(!re.is_match(&"a".repeat(5_000)));
    assert!(re.is_match(&format!("{}b", "a".repeat(5_000))));
}

/// Issue 21's pattern (58 bytes), whose innermost node a compiler that walks
/// each repetition visits 10^12 times: refused by the compile budget, at once.
#[test]
fn a_repetition_of_nothing_is_charged() {
    let pattern = "(?:(?:(?:(?:(?:(?:x{0}){100}){100}){100}){100}){100}){100}";
    assert_eq!(Regex::new(pattern).err(), Some("the pattern is too large (repetitions multiply it)"));
    assert_eq!(
        Regex::new("(?:(?:(?:){100}){100}){100}").err(),
        Some("the pattern is too large (repetitions multiply it)")
    );
}

/// Patterns regex-lite refuses or reads otherwise are refused here.
#[test]
fn what_regex_lite_reads_otherwise_is_refused() {
    for pattern in [
        "\\<admin",
        "admin\\>",
        "[--z]",
        "[\\d-z]",
        "[a-\\d]",
        "[a--b]",
        "[!--]",
        "[a&&b]",
        "[a~~b]",
        // regex-lite's nest limit: 12 repeated capture groups nest 51 deep
        "((((((((((((a)*)*)*)*)*)*)*)*)*)*)*)*",
    ] {
        assert!(Regex::new(pattern).is_err(), "{pattern:?} accepted");
    }
}

/// An anchored pattern stops reading the value once no thread is left; an
/// unanchored one reads on (a match may start anywhere).
#[test]
fn an_anchored_pattern_stops_when_no_thread_is_left() {
    let value = format!("prod-{}", "x".repeat(10_000));
    let read = |pattern: &str, value: &str| {
        let mut scratch = Scratch::default();
        let matched = Regex::new(pattern).unwrap().is_match_with(value, &mut scratch);
        (matched, scratch.read)
    };
    assert_eq!(read("^dev-[a-z]+$", &value), (false, 1));
    assert_eq!(read("^prod-x*y", &value), (false, value.len()));
    assert_eq!(read("^pro", &value), (true, 3));
    assert_eq!(read("dev-[a-z]+$", &value), (false, value.len()));
}

/// The deepest nesting accepted here stays within regex-lite's nest limit:
/// every group at its deepest (a capture repeated in a concatenation in an
/// alternation), and one more group is refused.
#[test]
fn the_deepest_nesting_accepted_is_within_regex_lites() {
    let nest = |groups: usize| (0..groups).fold("a".to_owned(), |inner, _| format!("(b|c{inner}*)"));
    let deepest = format!("x|y{}*", nest(10));
    assert!(Regex::new(&deepest).is_ok());
    assert!(regex_lite::Regex::new(&deepest).is_ok(), "{deepest}");
    assert_eq!(Regex::new(&format!("x|y{}*", nest(11))).err(), Some("groups nest too deeply (at most 10)"));
    assert!(regex_lite::Regex::new(&format!("x|y{}*", nest(12))).is_err(), "regex-lite's limit moved");
}
