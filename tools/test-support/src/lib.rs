//! Helpers every crate's tests share (the filter's e2e harness, the
//! companion's, the OCI image test), so there is one of each: a free port
//! that is never handed out twice, a wait on a condition with a deadline
//! (never a blind sleep), and a process's resident memory.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port free right now on loopback, never handed out before in this
/// process, and below the kernel's ephemeral range: a port from that range
/// can be taken as the source port of any outgoing connection between this
/// check and the moment a test's server binds it (seen: a companion started
/// late in a load test could not bind its port).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let below = ephemeral_low().clamp(FIRST_PORT + 1000, 65535);
    let span = u64::from(below - FIRST_PORT);
    // Spread over the range so parallel test processes rarely try the same
    // port; the bind below is what makes it free.
    let mut seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..10_000 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = FIRST_PORT + ((seed >> 33) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    // Every port below the range taken: any free one, as before.
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The lowest port tests pick: above the well-known and most registered
/// ports servers on a developer's machine use.
const FIRST_PORT: u16 = 20000;

/// The first port of the kernel's ephemeral range (Linux's default 32768
/// where it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32768)
}

/// Polls `probe` until it yields a value; `Err` with what was awaited after
/// `timeout`. Tests unwrap it, so the message names the condition.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process's resident memory in kB, from `/proc` (0 if unreadable).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{free_port, rss_kb, wait_for};

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss_kb(std::process::id()) > 0);
        assert_eq!(rss_kb(u32::MAX), 0);
    }

    #[tokio::test]
    async fn wait_for_returns_the_value_or_names_what_it_waited_for() {
        let mut n = 0;
        let got = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(got, Ok(3));
        let err = wait_for("never", Duration::from_millis(50), || async { None::<()> }).await;
        assert!(err.is_err_and(|e| e.contains("waiting for never")));
    }
}
