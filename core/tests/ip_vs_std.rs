//! core's IP parser against std's `FromStr` for `IpAddr`: the same answer on
//! every address std prints and on strings near the grammar.

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isogroup_core::ip::parse_ip;
use proptest::prelude::*;

fn near_the_grammar() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(vec!['0', '1', '2', '5', '9', 'a', 'f', 'F', ':', '.']),
            1 => prop::sample::select(vec!['g', ' ', '%', '[', '-', 'é']),
        ],
        0..42,
    )
    .prop_map(String::from_iter)
}

fn printed() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        // Few non-zero groups: `::` compression and IPv4 tails.
        prop::collection::vec(prop_oneof![Just(0u16), any::<u16>()], 8).prop_map(|g| {
            let a: [u16; 8] = g.try_into().unwrap();
            Ipv6Addr::from(a).to_string()
        }),
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_mapped().to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn same_as_std(text in prop_oneof![near_the_grammar(), printed()]) {
        prop_assert_eq!(parse_ip(&text), text.parse::<IpAddr>().ok(), "{:?}", text);
    }
}

#[test]
fn cases() {
    let cases = [
        "0.0.0.0",
        "255.255.255.255",
        "256.0.0.0",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.4:80",
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::8",
        "1:2:3:4:5:6:7:8::",
        "::ffff:10.0.0.1",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6::1.2.3.4",
        "1.2.3.4::",
        "12345::",
        "0000:0::0",
        ":1",
        "1:",
        "::1.2.3",
        "fe80::1%eth0",
        "",
    ];
    for text in cases {
        assert_eq!(parse_ip(text), text.parse::<IpAddr>().ok(), "{text:?}");
    }
}
