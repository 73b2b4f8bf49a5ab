//! Kubernetes Events for invalid `IsolationGroup` objects: the leader writes
//! one `events.k8s.io/v1` Event per occurrence of an `Accepted=False`
//! status (the status the watch loop writes, see `kube::groups`), naming the
//! object and the reason, so `kubectl describe isolationgroup <name>` and
//! `kubectl events` show it beside the status.
//!
//! - `events.k8s.io/v1`, not core `v1`: it is the current Events API (core
//!   `v1` Event is its legacy view of the same objects, so both
//!   `kubectl describe` and `kubectl events` list it), and the API server
//!   validates it strictly (reporting controller and instance, action).
//! - An Event about a cluster-scoped object must live in namespace `default`
//!   (or `kube-system`): the API server refuses any other; client-go's
//!   recorder puts them in `default` too.
//! - Not repeated: an occurrence is (uid, generation, the condition's
//!   transition time, message), and the Event's name is a hash of it. A
//!   rebuild, a recheck or a new leader that meets an occurrence already
//!   reported gets `409 AlreadyExists` (or skips it from memory) and writes
//!   nothing; a new spec, a new reason or a new transition is a new Event.
//!   Only `create` is needed (no series updates, so no `patch`).
//! - The API server drops Events after its `--event-ttl` (1 h by default);
//!   the status stays. A leader does not write one again for the same
//!   occurrence, a newly elected one does (it is still true).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::kube::groups::{API_GROUP, CONDITION, KIND, VERSION};
use crate::kube::store::KubeStore;
use crate::kube::watch::{self, Mirror, Report, Timing};

/// Where Events about cluster-scoped objects live (API server rule).
pub const NAMESPACE: &str = "default";
/// `reportingController`: a qualified name.
pub const REPORTER: &str = "isogroup.io/companion";
/// What the companion was doing when it found the problem.
const ACTION: &str = "Validate";
const REASON: &str = "Invalid";
/// The API server's limits: `note` at most 1 KiB, `reportingInstance` 128.
pub const NOTE_MAX: usize = 1024;
const INSTANCE_MAX: usize = 128;
/// Room left in a 253-byte name for the object's name before `.<hash>`.
const NAME_PREFIX_MAX: usize = 200;

/// One `IsolationGroup` as this module needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedGroup {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub status: Value,
}

/// `status`: this installation's entry (`kube::groups::own_status`).
fn watched(o: &DynamicObject, installation: &str) -> Option<WatchedGroup> {
    Some(WatchedGroup {
        name: o.name_any(),
        uid: o.metadata.uid.clone().unwrap_or_default(),
        generation: o.metadata.generation.unwrap_or(0),
        status: crate::kube::groups::own_status(&o.data, installation),
    })
}

/// FNV-1a, 64 bits: the same on every replica and every build, so two
/// leaders name one occurrence alike.
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The longest prefix of `text` within `max` bytes, on a char boundary.
pub fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The Event `o`'s status calls for, if any: its `Accepted` condition is
/// `False` for the object's current generation (a status about an older
/// spec waits for the loop to judge the new one).
pub fn event_for(o: &WatchedGroup, instance: &str, now_micros: &str) -> Option<Value> {
    let condition = o.status["conditions"].as_array()?.iter().find(|c| c["type"] == CONDITION)?;
    if condition["status"] != "False" || o.status["observedGeneration"] != o.generation {
        return None;
    }
    let message = condition["message"].as_str().unwrap_or_default();
    let since = condition["lastTransitionTime"].as_str().unwrap_or_default();
    let hash = fnv1a(&[&o.uid, &o.name, &o.generation.to_string(), since, message]);
    let prefix = clip(&o.name, NAME_PREFIX_MAX).trim_end_matches(['-', '.']);
    Some(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{prefix}.{hash:016x}"),
            "namespace": NAMESPACE,
            "labels": { (crate::kube::istio::MANAGED_BY.0): crate::kube::istio::MANAGED_BY.1 },
        },
        "eventTime": now_micros,
        "type": "Warning",
        "reportingController": REPORTER,
        "reportingInstance": clip(instance, INSTANCE_MAX),
        "action": ACTION,
        "reason": REASON,
        "regarding": {
            "apiVersion": format!("{API_GROUP}/{VERSION}"),
            "kind": KIND,
            "name": o.name,
            "uid": o.uid,
        },
        "note": clip(message, NOTE_MAX),
    }))
}

/// Watches `IsolationGroup` objects and, while this replica leads, writes
/// the Events their statuses call for; every `recheck` it looks again
/// without a change (a new leader reports what its predecessor could not).
pub async fn run(
    client: Client,
    store: Arc<KubeStore>,
    installation: String,
    instance: String,
    recheck: Duration,
    timing: Timing,
) {
    let (tx, mut rx) = mpsc::channel::<Report<WatchedGroup>>(64);
    let watched = move |o: &DynamicObject| watched(o, &installation);
    watch::spawn_optional(client.clone(), API_GROUP, KIND, &[VERSION], watched, |r| r, tx, timing);
    let events: Api<Event> = Api::namespaced(client, NAMESPACE);
    let mut mirror: Mirror<WatchedGroup> = Mirror::default();
    // Event names written (or found written), and those whose write failed
    // (logged once each).
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
    loop {
        match tokio::time::timeout(recheck, rx.recv()).await {
            Ok(Some(report)) => {
                mirror.apply(report);
                while let Ok(more) = rx.try_recv() {
                    mirror.apply(more);
                }
            }
            Ok(None) => return,
            Err(_) => {}
        }
        if !store.is_leader() {
            continue;
        }
        let now = k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Micros, true);
        let due: BTreeMap<String, Value> = mirror
            .items
            .values()
            .filter_map(|o| event_for(o, &instance, &now))
            .filter_map(|e| Some((e["metadata"]["name"].as_str()?.to_owned(), e)))
            .collect();
        reported.retain(|name| due.contains_key(name));
        failing.retain(|name| due.contains_key(name));
        for (name, event) in due {
            if reported.contains(&name) || !store.is_leader() {
                continue;
            }
            let event: Event = match serde_json::from_value(event) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(event = name, error = %e, "kubernetes: an Event that does not parse (a bug)");
                    continue;
                }
            };
            match events.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    reported.insert(name);
                }
                // Reported already (by this replica before a restart, or a
                // former leader).
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    reported.insert(name);
                }
                Err(e) => {
                    if failing.insert(name.clone()) {
                        tracing::warn!(event = name, error = %e, "kubernetes: cannot write an Event (retrying)");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn invalid(generation: i64, observed: i64, since: &str, message: &str) -> WatchedGroup {
        WatchedGroup {
            name: "broken".into(),
            uid: "uid-7".into(),
            generation,
            status: json!({ "observedGeneration": observed, "conditions": [{
                "type": "Accepted", "status": "False", "reason": "Invalid", "message": message,
                "observedGeneration": observed, "lastTransitionTime": since }] }),
        }
    }

    #[test]
    fn an_event_per_occurrence_of_an_invalid_status() {
        let now = "2026-01-01T00:00:00.000000Z";
        let first = invalid(1, 1, "2026-01-01T00:00:00Z", "spec.mode: \"loose\" is not \"permissive\" or \"strict\"");
        let e = event_for(&first, "companion-0", now).unwrap();
        assert_eq!(e["metadata"]["namespace"], "default");
        assert!(e["metadata"]["name"].as_str().unwrap().starts_with("broken."), "{e}");
        assert_eq!(
            e["regarding"],
            json!({ "apiVersion": "isogroup.io/v1alpha1", "kind": "IsolationGroup", "name": "broken", "uid": "uid-7" })
        );
        assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Warning"), Some("Invalid")));
        assert_eq!(e["note"], first.status["conditions"][0]["message"]);
        assert_eq!(e["reportingController"], REPORTER);
        assert_eq!(e["reportingInstance"], "companion-0");
        assert_eq!(e["eventTime"], now);
        serde_json::from_value::<Event>(e.clone()).unwrap();
        let name = |w: &WatchedGroup| event_for(w, "other-replica", "later").unwrap()["metadata"]["name"].clone();
        // (case, same Event as the first?)
        let cases: Vec<(WatchedGroup, bool)> = vec![
            // another replica, another time: the same occurrence
            (first.clone(), true),
            // a new spec, still invalid
            (invalid(2, 2, "2026-01-01T00:00:00Z", "spec.mode: \"loose\" is not \"permissive\" or \"strict\""), false),
            // another reason
            (invalid(1, 1, "2026-01-01T00:00:00Z", "spec.owner: 300 bytes, at most 256"), false),
            // valid in between, invalid again
            (invalid(1, 1, "2026-01-02T00:00:00Z", "spec.mode: \"loose\" is not \"permissive\" or \"strict\""), false),
        ];
        for (w, same) in cases {
            assert_eq!(name(&w) == e["metadata"]["name"], same, "{w:?}");
        }
        // no Event: valid, no status yet, or a status about an older spec
        let mut valid = first.clone();
        valid.status["conditions"][0]["status"] = json!("True");
        let mut unjudged = first.clone();
        unjudged.status = Value::Null;
        for w in [valid, unjudged, invalid(2, 1, "2026-01-01T00:00:00Z", "old")] {
            assert_eq!(event_for(&w, "companion-0", now), None, "{w:?}");
        }
    }

    #[test]
    fn long_texts_are_clipped_to_the_api_servers_limits() {
        let mut w = invalid(1, 1, "t", &"é".repeat(700));
        w.name = format!("{}-{}", "a".repeat(199), "b".repeat(40));
        let e = event_for(&w, &"i".repeat(300), "now").unwrap();
        let note = e["note"].as_str().unwrap();
        assert!(note.len() <= NOTE_MAX && note.len() >= NOTE_MAX - 1 && note.chars().all(|c| c == 'é'));
        assert_eq!(e["reportingInstance"].as_str().unwrap().len(), INSTANCE_MAX);
        let name = e["metadata"]["name"].as_str().unwrap();
        // 199 a's, the '-' at the cut trimmed, then the hash
        assert_eq!(name.len(), 199 + 1 + 16, "{name}");
        assert!(name.starts_with(&"a".repeat(199)) && name.as_bytes()[199] == b'.');
    }
}
