//! One watch per kind, each its own task feeding the loop in `kube::source`
//! over a channel: kube-rs watchers (which resume from the last resource
//! version or bookmark and re-list after `410 Gone`) with a jittered,
//! growing backoff after each error, so a `403` or a missing version never
//! becomes a tight LIST loop. Optional kinds (CRDs) try their versions in
//! order (DestinationRule `v1`, then `v1beta1`); a kind with none installed
//! counts as an empty, synced list (with a warning) and is probed again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// (namespace, name); namespace empty for cluster-scoped objects.
pub type Key = (String, String);

/// A watch event in our plain form (`None`: the object does not count).
pub enum Change<T> {
    Init,
    InitApply(Key, Option<T>),
    InitDone,
    Apply(Key, Option<T>),
    Delete(Key),
}

/// Backoff and probe timings (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first wait after an error; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often a kind with no installed version is probed again.
    pub missing_recheck: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            missing_recheck: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff, each wait jittered in [0.5, 1.5) so replicas that
/// failed together retry apart. kube-rs resets a backoff on every `Ok`
/// item, and a watcher yields one (`Init`) before each list, even a list
/// that fails: so `reset` counts only once no error came for a while
/// (four times the longest wait), as kube-rs's own default does.
pub struct Jittered {
    initial: Duration,
    max: Duration,
    next: Duration,
    last_error: Option<std::time::Instant>,
}

impl Jittered {
    pub fn new(t: &Timing) -> Jittered {
        Jittered { initial: t.backoff_initial, max: t.backoff_max, next: t.backoff_initial, last_error: None }
    }
}

impl Iterator for Jittered {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let wait = crate::random::jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        self.last_error = Some(std::time::Instant::now());
        Some(wait)
    }
}

impl Backoff for Jittered {
    fn reset(&mut self) {
        if self.last_error.is_none_or(|at| at.elapsed() > self.max * 4) {
            self.next = self.initial;
        }
    }
}

/// What a watch task tells the loop.
pub enum Report<T> {
    Change(Change<T>),
    /// No version of this optional kind is installed: an empty list.
    Missing(String),
    /// A watch or list error (the task backs off and retries).
    Error(String),
}

/// Mirrors one kind as `Key → T`.
pub struct Mirror<T> {
    pub items: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
    /// The first list is complete (or the kind is missing).
    pub synced: bool,
    /// The latest error, cleared by the next event.
    pub error: Option<String>,
    /// Whether the kind is not installed (a warning, not an error).
    pub missing: Option<String>,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Mirror { items: BTreeMap::new(), relist: None, synced: false, error: None, missing: None }
    }
}

impl<T> Mirror<T> {
    /// Applies a report; returns the keys it changed (`None`: everything,
    /// after a re-list).
    pub fn apply(&mut self, report: Report<T>) -> Option<Vec<Key>> {
        match report {
            Report::Error(e) => {
                self.error = Some(e);
                return Some(vec![]);
            }
            Report::Missing(why) => {
                self.error = None;
                self.missing = Some(why);
                self.synced = true;
                self.items.clear();
                return None;
            }
            Report::Change(c) => {
                self.error = None;
                self.missing = None;
                match c {
                    Change::Init => self.relist = Some(BTreeMap::new()),
                    Change::InitApply(k, v) => {
                        if let (Some(buf), Some(v)) = (self.relist.as_mut(), v) {
                            buf.insert(k, v);
                        }
                    }
                    Change::InitDone => {
                        if let Some(buf) = self.relist.take() {
                            self.items = buf;
                        }
                        self.synced = true;
                        return None;
                    }
                    Change::Apply(k, v) => {
                        match v {
                            Some(v) => self.items.insert(k.clone(), v),
                            None => self.items.remove(&k),
                        };
                        return Some(vec![k]);
                    }
                    Change::Delete(k) => {
                        self.items.remove(&k);
                        return Some(vec![k]);
                    }
                }
            }
        }
        Some(vec![])
    }
}

fn key<K: ResourceExt>(k: &K) -> Key {
    (k.namespace().unwrap_or_default(), k.name_any())
}

fn plain<K: ResourceExt, T>(event: Event<K>, convert: &impl Fn(&K) -> Option<T>) -> Change<T> {
    match event {
        Event::Init => Change::Init,
        Event::InitApply(k) => Change::InitApply(key(&k), convert(&k)),
        Event::InitDone => Change::InitDone,
        Event::Apply(k) => Change::Apply(key(&k), convert(&k)),
        Event::Delete(k) => Change::Delete(key(&k)),
    }
}

/// Runs a watch of `api` until the receiver goes away.
async fn run_watch<K, T, U>(
    api: Api<K>,
    config: watcher::Config,
    convert: impl Fn(&K) -> Option<T> + Send,
    wrap: impl Fn(Report<T>) -> U + Send,
    tx: &mpsc::Sender<U>,
    timing: &Timing,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = watcher::watcher(api, config).backoff(Jittered::new(timing)).boxed();
    while let Some(e) = events.next().await {
        let report = match e {
            Ok(e) => Report::Change(plain(e, &convert)),
            Err(e) => Report::Error(e.to_string()),
        };
        if tx.send(wrap(report)).await.is_err() {
            return;
        }
    }
}

/// Watches a built-in kind.
pub fn spawn<K, T, U>(
    api: Api<K>,
    config: watcher::Config,
    convert: impl Fn(&K) -> Option<T> + Send + 'static,
    wrap: impl Fn(Report<T>) -> U + Send + 'static,
    tx: mpsc::Sender<U>,
    timing: Timing,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
    U: Send + 'static,
{
    tokio::spawn(async move { run_watch(api, config, convert, wrap, &tx, &timing).await });
}

/// Watches a custom kind, cluster-wide, in the first of `versions` the API
/// server has.
#[allow(clippy::too_many_arguments)]
pub fn spawn_optional<T, U>(
    client: Client,
    group: &'static str,
    kind: &'static str,
    versions: &'static [&'static str],
    convert: impl Fn(&DynamicObject) -> Option<T> + Send + 'static,
    wrap: impl Fn(Report<T>) -> U + Send + 'static,
    tx: mpsc::Sender<U>,
    timing: Timing,
) where
    T: Send + 'static,
    U: Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Jittered::new(&timing);
        loop {
            match first_installed(&client, group, kind, versions).await {
                Ok(Some(api)) => {
                    backoff.reset();
                    return run_watch(api, watcher::Config::default(), convert, wrap, &tx, &timing).await;
                }
                Ok(None) => {
                    let why = format!("{kind}: no version of {group} ({}) is installed", versions.join(", "));
                    if tx.send(wrap(Report::Missing(why))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(crate::random::jitter(timing.missing_recheck)).await;
                }
                Err(e) => {
                    if tx.send(wrap(Report::Error(format!("{kind}: {e}")))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(timing.backoff_max)).await;
                }
            }
        }
    });
}

pub fn dynamic_api(client: &Client, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

/// The API of the first version the server lists, `None` when every one
/// answers 404.
async fn first_installed(
    client: &Client,
    group: &str,
    kind: &str,
    versions: &[&str],
) -> Result<Option<Api<DynamicObject>>, kube::Error> {
    for version in versions {
        let api = dynamic_api(client, group, version, kind);
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(Some(api)),
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn backoff_grows_jittered_and_resets() {
        let t = Timing {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            missing_recheck: Duration::ZERO,
        };
        let mut b = Jittered::new(&t);
        let waits: Vec<Duration> = (0..5).map(|_| b.next().unwrap_or_default()).collect();
        // nominal 100, 200, 400, 400, 400, each within [0.5, 1.5) of it
        for (w, nominal) in waits.iter().zip([100u64, 200, 400, 400, 400]) {
            let n = Duration::from_millis(nominal);
            assert!(*w >= n / 2 && *w < n * 3 / 2, "{waits:?}");
        }
        // an Ok right after an error (kube-rs's Init before each list) does not reset
        b.reset();
        assert!(b.next().unwrap_or_default() >= Duration::from_millis(200));
        // a quiet spell does
        b.last_error = Some(std::time::Instant::now() - Duration::from_secs(2));
        b.reset();
        assert!(b.next().unwrap_or_default() < Duration::from_millis(150));
    }

    #[test]
    fn mirror_relists_whole_and_reports_changes() {
        let k = |n: &str| (String::new(), n.to_owned());
        let mut m: Mirror<u32> = Mirror::default();
        assert_eq!(m.apply(Report::Change(Change::Init)), Some(vec![]));
        m.apply(Report::Change(Change::InitApply(k("a"), Some(1))));
        m.apply(Report::Change(Change::InitApply(k("skip"), None)));
        assert!(!m.synced);
        assert_eq!(m.apply(Report::Change(Change::InitDone)), None);
        assert!(m.synced);
        assert_eq!(m.items.keys().cloned().collect::<Vec<_>>(), [k("a")]);
        assert_eq!(m.apply(Report::Error("boom".into())), Some(vec![]));
        assert_eq!(m.error.as_deref(), Some("boom"));
        assert_eq!(m.apply(Report::Change(Change::Apply(k("b"), Some(2)))), Some(vec![k("b")]));
        assert_eq!(m.error, None, "an event clears the error");
        // a re-list replaces everything at its end only
        m.apply(Report::Change(Change::Init));
        m.apply(Report::Change(Change::InitApply(k("c"), Some(3))));
        assert_eq!(m.items.len(), 2);
        m.apply(Report::Change(Change::InitDone));
        assert_eq!(m.items.keys().cloned().collect::<Vec<_>>(), [k("c")]);
        // a missing kind is synced and empty
        let mut opt: Mirror<u32> = Mirror::default();
        opt.apply(Report::Missing("no CRD".into()));
        assert!(opt.synced && opt.items.is_empty() && opt.missing.is_some());
    }
}
