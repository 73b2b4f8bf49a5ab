//! Unauthenticated flood load (issue 23's exhaustion items), sent at the
//! companion while the held polls go on:
//!
//! - polls with unique `x-isogroup-poller` ids, half of them over-long
//!   (past the 128-byte cap), the rest more than the companion counts;
//! - `POST /v1/reports` from unique instance ids, each a valid small report;
//! - `PUT /v1/table` without a token and with a big body.
//!
//! Each kind runs on its own tasks and connections; the driver measures
//! poll latency and RSS beside it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Error;

/// How many tasks send each kind.
pub const POLL_TASKS: usize = 24;
pub const REPORT_TASKS: usize = 8;
pub const PUT_TASKS: usize = 2;
/// The unauthenticated `PUT /v1/table` body (the companion's table limit is
/// far below what it would once have read).
pub const PUT_BYTES: usize = 32 << 20;

/// What the flood sent and what came back, per kind.
#[derive(Default)]
pub struct Counts {
    pub sent: BTreeMap<&'static str, u64>,
    /// Per kind, per status (`0`: no answer, e.g. the connection closed
    /// while the body was being sent).
    pub statuses: BTreeMap<(&'static str, u16), u64>,
}

pub struct Flood {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// The table version and epoch a flood poll names: the current one, so a
/// poll is answered at once with a `304` (the flood costs the companion its
/// bookkeeping, not table bytes).
pub struct Current {
    pub version: AtomicU64,
    pub epoch: Mutex<Option<String>>,
}

/// A valid report, small (one destination).
pub fn report_body(i: u64) -> String {
    format!(
        r#"{{"workload": "flood-w-{}", "namespace": "flood", "sample": 8, "window_s": 10, "outbound": {{"svc-{}": {{"kept": 1, "changed": 0, "healed": 0, "dropped": 0, "untraced": 0}}}}}}"#,
        i % 5000,
        i % 500
    )
}

/// The `i`-th flood poller id: every other one is over-long.
pub fn poller_id(i: u64) -> String {
    if i.is_multiple_of(2) {
        format!("flood-long-{i}-{}", "x".repeat(200))
    } else {
        format!("flood-{i}")
    }
}

fn record(counts: &Mutex<Counts>, kind: &'static str, status: u16) {
    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
    *c.sent.entry(kind).or_default() += 1;
    *c.statuses.entry((kind, status)).or_default() += 1;
}

impl Flood {
    pub fn start(url: &str, current: Arc<Current>) -> Result<Flood, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..POLL_TASKS {
            let (client, url, stop, counts, next, current) =
                (reqwest::Client::new(), url.to_owned(), stop.clone(), counts.clone(), next.clone(), current.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let mut poll = format!("{url}/v1/table?after={}&wait=0", current.version.load(Ordering::Relaxed));
                    if let Some(e) = current.epoch.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
                        poll.push_str("&epoch=");
                        poll.push_str(e);
                    }
                    let status = match client.get(poll).header("x-isogroup-poller", poller_id(i)).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    record(&counts, "poll ids", status);
                }
            }));
        }
        for _ in 0..REPORT_TASKS {
            let (client, url, stop, counts, next) =
                (reqwest::Client::new(), url.to_owned(), stop.clone(), counts.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let sent = client
                        .post(format!("{url}/v1/reports"))
                        .header("x-isogroup-poller", format!("flood-r-{i}"))
                        .header("content-type", "application/json")
                        .body(report_body(i))
                        .send()
                        .await;
                    record(&counts, "reports", sent.map_or(0, |r| r.status().as_u16()));
                }
            }));
        }
        let big = Bytes::from(vec![b' '; PUT_BYTES]);
        for _ in 0..PUT_TASKS {
            let (client, url, stop, counts, big) =
                (reqwest::Client::new(), url.to_owned(), stop.clone(), counts.clone(), big.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = client
                        .put(format!("{url}/v1/table"))
                        .header("content-type", "application/json")
                        .body(big.clone())
                        .send()
                        .await;
                    record(&counts, "big PUT, no token", sent.map_or(0, |r| r.status().as_u16()));
                }
            }));
        }
        Ok(Flood { stop, counts, tasks, started: Instant::now() })
    }

    /// Stops every task; answers the counts and how long it ran.
    pub async fn stop(self) -> (Counts, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let ran = self.started.elapsed();
        for task in self.tasks {
            // A task ends after its request in flight; one stuck is cut off.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        (counts, ran)
    }
}

/// Poll latency: one client, one poller id, `GET /v1/table?after=<current>&wait=0&delta=1`
/// (an at-once `304`) every 20 ms for `span`.
pub async fn probe_polls(url: &str, current: &Current, span: Duration) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let until = Instant::now() + span;
    while Instant::now() < until {
        let mut poll = format!("{url}/v1/table?after={}&wait=0&delta=1", current.version.load(Ordering::Relaxed));
        if let Some(e) = current.epoch.lock().unwrap_or_else(|e| e.into_inner()).as_deref() {
            poll.push_str("&epoch=");
            poll.push_str(e);
        }
        let t0 = Instant::now();
        if let Ok(r) = client.get(poll).header("x-isogroup-poller", "fanout-probe").send().await {
            if r.bytes().await.is_ok() {
                out.push(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.sort();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_other_flood_id_is_over_the_companions_cap() {
        assert!(poller_id(0).len() > 128);
        assert!(poller_id(1).len() <= 128);
        assert_ne!(poller_id(3), poller_id(5));
    }

    #[test]
    fn a_flood_report_is_small_valid_json_with_the_specs_fields() {
        let body = report_body(7);
        assert!(body.len() < 16 * 1024);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for key in ["workload", "namespace", "sample", "window_s", "outbound"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["outbound"]["svc-7"]["kept"], 1);
    }
}
