//! Following the store: read every key under the prefix at one revision
//! (paged), publish, then watch from the next revision. Any failure (etcd
//! down at start, a member gone, quorum lost, a compacted watch) starts
//! over after a backoff with jitter, saying why; a replica that has loaded
//! the state once stays ready meanwhile and keeps serving it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchClient, WatchOptions};

use super::layout::Entry;
use super::{EtcdStore, MAX_DECODE_BYTES};
use crate::store::Readiness;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Keys per page of the initial read, at most.
const PAGE: i64 = 1000;
/// What a page of the initial read aims at: the next page's key count
/// comes from the bytes per key of the last one. A page over the decode
/// limit anyway is read again in quarters.
const PAGE_BYTES: usize = 2 << 20;

impl EtcdStore {
    /// Runs until the process ends.
    pub async fn follow(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let why = self.follow_once(&mut backoff).await;
            self.served.metrics().etcd_errors.inc();
            let loaded = self.mirror.lock().map(|m| m.loaded).unwrap_or(false);
            let endpoints = self.endpoints.join(",");
            let detail = format!("etcd at {endpoints}: {why}; retrying");
            if loaded {
                self.served.set_readiness(Readiness::Unreachable(format!("{detail}; serving the last state read")));
            } else {
                self.served.set_readiness(Readiness::Loading(detail.clone()));
            }
            let pause = crate::random::jitter(backoff);
            tracing::warn!(%detail, retry_in = ?pause, "etcd: not following the store");
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One read and watch; returns why it stopped.
    async fn follow_once(&self, backoff: &mut Duration) -> String {
        let mut client = match self.watch_client().await {
            Ok(c) => c.watch_client().max_decoding_message_size(MAX_DECODE_BYTES),
            Err(e) => return e.to_string(),
        };
        let (entries, revision) = match self.read_all().await {
            Ok(x) => x,
            Err(e) => return e,
        };
        self.sweep(&entries).await;
        if let Ok(mut mirror) = self.mirror.lock() {
            mirror.entries = entries;
            mirror.revision = revision;
            self.refresh(&mut mirror);
            self.update_readiness(&mut mirror);
        }
        // Every key as of `revision` is in the mirror: caught up to it.
        self.seen.send_replace(revision);
        *backoff = super::follow::BACKOFF_MIN;
        tracing::info!(revision, "etcd: state read; following");
        self.watch_from(&mut client, revision + 1).await
    }

    /// Ready once a state was served (following the store now). A store
    /// holding only what cannot be read leaves a new replica not ready,
    /// naming why.
    fn update_readiness(&self, mirror: &mut super::Mirror) {
        if mirror.rejected.is_none() {
            mirror.loaded = true;
            self.loaded();
        }
        let readiness = match &mirror.rejected {
            Some(why) if !mirror.loaded => Readiness::Loading(format!("the stored state is refused: {why}")),
            _ => Readiness::Ready,
        };
        if self.served.readiness() != readiness {
            self.served.set_readiness(readiness);
        }
    }

    /// Every key under the prefix, in pages, all at one revision. Pages are
    /// cut by bytes (see `PAGE_BYTES`): a store of large values pages in
    /// fewer keys.
    async fn read_all(&self) -> Result<(BTreeMap<String, Entry>, i64), String> {
        let mut kv = self.kv.clone();
        let end = prefix_end(self.prefix.as_bytes());
        let mut from = self.prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut entries = BTreeMap::new();
        let mut limit = PAGE;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            self.count("range");
            let response = match kv.get(from.clone(), Some(options)).await {
                Ok(r) => r,
                Err(e) if limit > 1 && too_large(&e) => {
                    limit = (limit / 4).max(1);
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let mut bytes = 0;
            for kv in response.kvs() {
                bytes += kv.key().len() + kv.value().len();
                let relative = kv.key().get(self.prefix.len()..).unwrap_or_default();
                let key = String::from_utf8_lossy(relative).into_owned();
                entries.insert(key, Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() });
            }
            let per_key = bytes / response.kvs().len().max(1);
            limit = i64::try_from(PAGE_BYTES / per_key.max(1)).unwrap_or(PAGE).clamp(1, PAGE);
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((entries, revision)),
            }
        }
    }

    /// Applies watch events to the mirror until the watch fails. The
    /// mirror's revision moves only with what it has applied: each event's
    /// revision (etcd sends a revision's events in one response), and
    /// periodic progress notifications of this watch (etcd sends those only
    /// once the watch has every event up to their revision). A
    /// watch-created response's revision is the store's at creation, ahead
    /// of the events still to come, and moves nothing; neither does an
    /// answer to a progress request (watch id -1), which etcd releases
    /// without the fix of etcd issue 15220 (Debian's 3.4.23 among them)
    /// send ahead of events still queued, so none is asked for. Writes wait
    /// only for revisions of their own keys (`meta/rev`), so another
    /// application's writes under another prefix never hold them up.
    async fn watch_from(&self, client: &mut WatchClient, start: i64) -> String {
        let options = WatchOptions::new()
            .with_range(prefix_end(self.prefix.as_bytes()))
            .with_start_revision(start)
            .with_progress_notify();
        self.count("watch");
        let mut stream = match client.watch(self.prefix.as_bytes().to_vec(), Some(options)).await {
            Ok(s) => s,
            Err(e) => return format!("watch: {e}"),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return "the watch ended".into(),
                Err(e) => return format!("watch: {e}"),
            };
            if response.canceled() {
                let compacted = response.compact_revision();
                return format!("watch canceled ({}; compacted at {compacted})", response.cancel_reason());
            }
            if response.created() {
                continue;
            }
            let Ok(mut mirror) = self.mirror.lock() else { return "mirror lock poisoned".into() };
            let mut relevant = false;
            let mut applied = 0;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                applied = applied.max(kv.mod_revision());
                let relative = kv.key().get(self.prefix.len()..).unwrap_or_default();
                let key = String::from_utf8_lossy(relative).into_owned();
                relevant |= !in_other_generation(&mirror.entries, &key);
                match event.event_type() {
                    EventType::Put => {
                        mirror
                            .entries
                            .insert(key, Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() });
                    }
                    EventType::Delete => {
                        mirror.entries.remove(&key);
                    }
                }
            }
            if response.events().is_empty() && response.watch_id() >= 0 {
                // This watch's periodic progress notification.
                applied = response.header().map_or(0, |h| h.revision());
            }
            mirror.revision = mirror.revision.max(applied);
            // Writes into a generation not served yet change nothing served:
            // skip the rebuild until the switch arrives.
            if relevant {
                self.refresh(&mut mirror);
            }
            self.update_readiness(&mut mirror);
            let seen = mirror.revision;
            drop(mirror);
            self.seen.send_replace(seen);
        }
    }
}

/// True when etcd's answer was over the decode limit.
fn too_large(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("too large") || text.contains("OutOfRange")
}

/// True for a key of a generation other than the one `meta/rev` names.
fn in_other_generation(entries: &BTreeMap<String, Entry>, key: &str) -> bool {
    let Some(generation) = key.strip_prefix("gen/").and_then(|r| r.split_once('/')).map(|(g, _)| g) else {
        return false;
    };
    let served = entries.get(super::layout::REV).and_then(|e| {
        serde_json::from_slice::<serde_json::Value>(&e.value).ok()?.get("generation")?.as_str().map(str::to_owned)
    });
    served.is_some_and(|s| s != generation)
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_ends() {
        let cases: &[(&[u8], &[u8])] =
            &[(b"/isogroup/", b"/isogroup0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"x", b"y")];
        for (prefix, want) in cases {
            assert_eq!(super::prefix_end(prefix), *want, "{prefix:?}");
        }
    }
}
