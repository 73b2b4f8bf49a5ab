//! The rule regex against regex-lite (the engine it replaces): the same
//! answer on every pattern of the subset and every input here, and patterns
//! outside the subset refused.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::regex::Regex;

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
        ("\\bword", "unsupported escape (\\b, \\p, \\x, back-references and the like are not supported)"),
        ("\\p{L}", "unsupported escape (\\b, \\p, \\x, back-references and the like are not supported)"),
        ("(a)\\1", "unsupported escape (\\b, \\p, \\x, back-references and the like are not supported)"),
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
        (&"(".repeat(40), "groups nest too deeply (at most 32)"),
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
