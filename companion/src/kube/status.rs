//! The `IsolationGroup` status writer: this installation's entry of each
//! group's status (`status.installations.<id>`), written by the leader,
//! fenced and in the background, with its own memo of what is written.
//! A failed write is retried by its own task after a jittered, growing
//! backoff (as a controller requeues), re-reading the object each time,
//! until it lands, a newer decision for the group replaces it, the group
//! is gone, or this replica no longer leads (then the memo entry is
//! forgotten: leading again, the next rebuild writes anew).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use tokio::task::AbortHandle;

use crate::kube::groups::{self, GroupObject, Verdict};
use crate::kube::leader::Fenced;
use crate::kube::watch::{Jittered, Timing};

/// Statuses written (or being written), by group, keyed without the time,
/// with the task writing it: at most one per group, aborted when its
/// entry is replaced or removed.
type Written = Arc<std::sync::Mutex<BTreeMap<String, (serde_json::Value, AbortHandle)>>>;

/// Where statuses go (this installation's entry of each `IsolationGroup`'s
/// status, written fenced), and what was written, so one verdict is
/// written once.
pub(crate) struct StatusWriter {
    api: Api<DynamicObject>,
    installation: String,
    fence: crate::kube::leader::Fence,
    /// The backoff between attempts of a failed write.
    timing: Timing,
    written: Written,
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        if let Ok(written) = self.written.lock() {
            written.values().for_each(|(_, task)| task.abort());
        }
    }
}

impl StatusWriter {
    pub(crate) fn new(
        api: Api<DynamicObject>,
        installation: &str,
        fence: crate::kube::leader::Fence,
        timing: Timing,
    ) -> Self {
        StatusWriter { api, installation: installation.to_owned(), fence, timing, written: Written::default() }
    }

    /// Writes each object's status entry (`status.installations.<id>`) when it
    /// differs from the one observed (in the background: a slow API server
    /// never holds the table back). A JSON merge patch of that one key: other
    /// installations' entries are left as they are.
    pub(crate) fn write(
        &self,
        objects: &[GroupObject],
        verdicts: &BTreeMap<String, Verdict>,
        left_out: &crate::kube::degrade::LeftOut,
    ) {
        // group → its lanes left out (`<service>: why`).
        let mut lanes_out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (lane, why) in left_out {
            if let Some((service, group)) = lane.rsplit_once('/') {
                lanes_out.entry(group).or_default().push(format!("{service}: {why}"));
            }
        }
        let Ok(mut written) = self.written.lock() else { return };
        let now = k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        written.retain(|name, (_, task)| {
            let keep = verdicts.contains_key(name);
            if !keep {
                task.abort();
            }
            keep
        });
        for o in objects {
            let Some(verdict) = verdicts.get(&o.name) else { continue };
            let out = lanes_out.get(o.name.as_str()).map_or(&[][..], Vec::as_slice);
            let Some(status) = groups::status_update(o, verdict, out, &now) else {
                if let Some((_, task)) = written.remove(&o.name) {
                    task.abort();
                }
                continue;
            };
            // Ignoring the time: the same status is in flight already.
            let key = serde_json::json!([
                status["observedGeneration"],
                status["conditions"][0]["status"],
                status["conditions"][0]["message"],
                status["lanesLeftOut"]
            ]);
            if written.get(&o.name).is_some_and(|(k, _)| *k == key) {
                continue;
            }
            if let Err(why) = verdict {
                tracing::warn!(group = %o.name, error = %why, "kubernetes: IsolationGroup left out of the table");
            }
            let task = tokio::spawn(write_until_done(
                WriteTask {
                    api: self.api.clone(),
                    name: o.name.clone(),
                    id: self.installation.clone(),
                    fence: self.fence.clone(),
                    memo: self.written.clone(),
                    key: key.clone(),
                },
                status,
                self.timing,
            ));
            // A newer decision replaces the one in flight (or retrying).
            if let Some((_, older)) = written.insert(o.name.clone(), (key, task.abort_handle())) {
                older.abort();
            }
        }
    }
}

/// One group's status write, and where it is remembered.
struct WriteTask {
    api: Api<DynamicObject>,
    name: String,
    /// The installation (the status entry's key).
    id: String,
    fence: crate::kube::leader::Fence,
    memo: Written,
    /// The memo entry this write is for.
    key: serde_json::Value,
}

impl WriteTask {
    /// Whether the memo still holds this write's decision (not replaced by
    /// a newer one, the group not gone).
    fn current(&self) -> bool {
        self.memo.lock().is_ok_and(|w| w.get(&self.name).is_some_and(|(k, _)| *k == self.key))
    }

    /// One attempt: fenced (only while leading, no later than the renew
    /// deadline), under the resourceVersion read just before (after this
    /// replica took the Lease).
    async fn attempt(&self, status: &serde_json::Value) -> Result<DynamicObject, Fenced> {
        let write = async {
            let current = self.api.get(&self.name).await?;
            let rv = current.metadata.resource_version;
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": rv },
                "status": { "installations": { self.id.as_str(): status } },
            });
            let params = PatchParams {
                field_manager: Some(crate::kube::istio::field_manager(&self.id)),
                ..PatchParams::default()
            };
            self.api.patch_status(&self.name, &params, &Patch::Merge(&patch)).await
        };
        self.fence.write(write).await
    }
}

/// Writes `status` until it lands, retrying after a jittered, growing
/// backoff (each attempt reads the object afresh: a `409` for a stale
/// version is retried too); stops when the memo no longer holds this
/// decision, or when not leading (then forgets it: the next rebuild while
/// leading decides again).
async fn write_until_done(task: WriteTask, status: serde_json::Value, timing: Timing) {
    let mut backoff = Jittered::new(&timing);
    loop {
        if !task.current() {
            return;
        }
        match task.attempt(&status).await {
            Ok(_) => return,
            Err(Fenced::NotLeader) => {
                tracing::debug!(group = %task.name, "kubernetes: IsolationGroup status not written (not leading)");
                if let Ok(mut w) = task.memo.lock() {
                    if w.get(&task.name).is_some_and(|(k, _)| *k == task.key) {
                        w.remove(&task.name);
                    }
                }
                return;
            }
            Err(e) => {
                let wait = backoff.next().unwrap_or(timing.backoff_max);
                tracing::warn!(group = %task.name, error = %e, retry_in = ?wait, "kubernetes: cannot write the IsolationGroup status");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
