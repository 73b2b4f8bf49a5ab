//! The `IsolationGroup` status writer: this installation's entry of each
//! group's status (`status.installations.<id>`), written by the leader,
//! fenced and in the background, with its own memo of what is written
//! (a failed write forgets its entry, so the next rebuild tries again).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams};

use crate::kube::groups::{self, GroupObject, Verdict};

/// Statuses written (or being written), by group, keyed without the time.
type Written = Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>;

/// Where statuses go (this installation's entry of each `IsolationGroup`'s
/// status, written fenced), and what was written, so one verdict is
/// written once.
pub(crate) struct StatusWriter {
    api: Api<DynamicObject>,
    installation: String,
    fence: crate::kube::leader::Fence,
    written: Written,
}

impl StatusWriter {
    pub(crate) fn new(api: Api<DynamicObject>, installation: &str, fence: crate::kube::leader::Fence) -> Self {
        StatusWriter { api, installation: installation.to_owned(), fence, written: Written::default() }
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
        written.retain(|name, _| verdicts.contains_key(name));
        for o in objects {
            let Some(verdict) = verdicts.get(&o.name) else { continue };
            let out = lanes_out.get(o.name.as_str()).map_or(&[][..], Vec::as_slice);
            let Some(status) = groups::status_update(o, verdict, out, &now) else {
                written.remove(&o.name);
                continue;
            };
            // Ignoring the time: the same status is in flight already.
            let key = serde_json::json!([
                status["observedGeneration"],
                status["conditions"][0]["status"],
                status["conditions"][0]["message"],
                status["lanesLeftOut"]
            ]);
            if written.get(&o.name) == Some(&key) {
                continue;
            }
            written.insert(o.name.clone(), key);
            if let Err(why) = verdict {
                tracing::warn!(group = %o.name, error = %why, "kubernetes: IsolationGroup left out of the table");
            }
            let (api, name, memo, fence) = (self.api.clone(), o.name.clone(), self.written.clone(), self.fence.clone());
            let id = self.installation.clone();
            tokio::spawn(async move {
                // Fenced: only while leading, no later than the renew
                // deadline, under the resourceVersion read just before (after
                // this replica took the Lease); refused as stale, the memo is
                // forgotten and the next rebuild decides again.
                let write = async {
                    let current = api.get(&name).await?;
                    let rv = current.metadata.resource_version;
                    let patch = serde_json::json!({
                        "metadata": { "resourceVersion": rv },
                        "status": { "installations": { id.as_str(): status } },
                    });
                    let params = PatchParams {
                        field_manager: Some(crate::kube::istio::field_manager(&id)),
                        ..PatchParams::default()
                    };
                    api.patch_status(&name, &params, &Patch::Merge(&patch)).await
                };
                if let Err(e) = fence.write(write).await {
                    tracing::warn!(group = %name, error = %e, "kubernetes: cannot write the IsolationGroup status");
                    if let Ok(mut w) = memo.lock() {
                        w.remove(&name);
                    }
                }
            });
        }
    }
}
