//! Runs `decide` in a loop, for profilers (`valgrind --tool=callgrind`):
//! instruction counts per decision are repeatable where timings are not.

use isogroup_core::decide::{decide, RequestView};
use isogroup_core::{synth, Limits, Table};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let Ok(table) = Table::compile(&synth::table(10_000, 100), "base", &Limits::default()) else { return };
    let (host, group) = (synth::service(5), synth::group(35));
    let mut routed = 0usize;
    for _ in 0..n {
        let view = RequestView {
            authority: std::hint::black_box(host.as_bytes()),
            group: Some(std::hint::black_box(&group)),
            strict: None,
            namespace: None,
        };
        routed += usize::from(matches!(std::hint::black_box(decide(&table, &view)), isogroup_core::Decision::Route(_)));
    }
    println!("{routed} routed");
}
