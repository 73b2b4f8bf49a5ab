//! The rule regex against regex-lite on generated patterns of the documented
//! subset and generated values: the same answer every time. And on any
//! string (over an alphabet of every metacharacter, so most are not in the
//! subset): whenever ours accepts a pattern, regex-lite accepts it too and
//! answers the same.

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use isogroup_core::regex::Regex;
use proptest::prelude::*;

/// A pattern of the subset, over a small alphabet so values hit it.
fn pattern() -> impl Strategy<Value = String> {
    let atom = prop_oneof![prop::sample::select(vec![
        "a", "b", "-", ".", "\\d", "\\w", "\\s", "\\.", "[ab]", "[^a]", "[a-c0-9]", "é"
    ])
    .prop_map(str::to_owned),];
    let leaf = (atom, prop::sample::select(vec!["", "", "*", "+", "?", "{2}", "{1,3}", "{2,}", "*?"]))
        .prop_map(|(a, r)| format!("{a}{r}"));
    let tree = leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| v.concat()),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join("|"))),
            (inner, prop::sample::select(vec!["*", "+", "?", "{0,2}", ""])).prop_map(|(p, r)| format!("(?:{p}){r}")),
        ]
    });
    (any::<bool>(), tree, any::<bool>())
        .prop_map(|(start, p, end)| format!("{}{p}{}", if start { "^" } else { "" }, if end { "$" } else { "" }))
}

fn value() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', 'c', '-', '.', '1', ' ', 'é', '\n', '_']), 0..12)
        .prop_map(String::from_iter)
}

/// Any string over metacharacters, escapes' letters, digits and literals.
fn any_pattern() -> impl Strategy<Value = String> {
    let alphabet = "ab-.\\dwsDWSnt<>[]^$()?:|*+{}0123,&~/é _Pxz".chars().collect::<Vec<_>>();
    prop::collection::vec(prop::sample::select(alphabet), 0..24).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn same_answer_as_regex_lite(p in pattern(), values in prop::collection::vec(value(), 1..8)) {
        let ours = Regex::new(&p).unwrap();
        let theirs = regex_lite::Regex::new(&p).unwrap();
        for v in &values {
            prop_assert_eq!(ours.is_match(v), theirs.is_match(v), "{:?} on {:?}", p, v);
        }
    }

    #[test]
    fn whatever_is_accepted_regex_lite_reads_the_same(p in any_pattern(), values in prop::collection::vec(value(), 1..8)) {
        let Ok(ours) = Regex::new(&p) else { return Ok(()) };
        let theirs = regex_lite::Regex::new(&p);
        prop_assert!(theirs.is_ok(), "{:?}: accepted here, refused by regex-lite: {:?}", p, theirs.err());
        let theirs = theirs.unwrap();
        for v in &values {
            prop_assert_eq!(ours.is_match(v), theirs.is_match(v), "{:?} on {:?}", p, v);
        }
    }
}
