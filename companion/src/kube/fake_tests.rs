//! The fake API server itself, checked where it behaves as the real one
//! and the companion's tests rely on it: field ownership, preconditions,
//! limits, watches, pod termination, and a real `kubectl` driving it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::fake::kinds::{configmaps, destination_rules, every, pods, slices};
use crate::kube::fake::{endpoint_slice, kind_name, FakeApi, CONFIGMAP_LIMIT, TEST_MANAGER};

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";

async fn fake() -> FakeApi {
    FakeApi::start(&every()).await
}

/// One request: (status, body as JSON, or the text as a string).
async fn call(fake: &FakeApi, method: &str, path: &str, content_type: &str, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{}{path}", fake.url));
    if !body.is_null() {
        req = req.header("content-type", content_type).body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

const DR_PATH: &str = "/apis/networking.istio.io/v1/namespaces/bookinfo/destinationrules/reviews";

fn dr(spec: Value, labels: Value) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": { "name": "reviews", "namespace": "bookinfo", "labels": labels }, "spec": spec })
}

async fn apply(fake: &FakeApi, path: &str, manager: &str, force: bool, obj: Value) -> (u16, Value) {
    call(fake, "PATCH", &format!("{path}?fieldManager={manager}&force={force}"), APPLY, obj).await
}

/// The `fieldsV1` of `manager`'s entry (operation `op`) in `obj`.
fn fields_of(obj: &Value, manager: &str, op: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["manager"] == manager && e["operation"] == op)
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn applies_merge_across_managers_and_conflict_only_on_differing_values() {
    let fake = fake().await;
    let subsets_a = json!([{ "name": "base", "labels": { "g": "base" } }]);
    let (code, o) = apply(
        &fake,
        DR_PATH,
        "alpha",
        false,
        dr(json!({ "host": "reviews", "subsets": subsets_a }), json!({ "x": "1" })),
    )
    .await;
    assert_eq!(code, 201, "{o}");
    assert_eq!(
        fields_of(&o, "alpha", "Apply"),
        json!({ "f:metadata": { "f:labels": { "f:x": {} } }, "f:spec": { "f:host": {}, "f:subsets": {} } }),
        "Istio's CRD has no list type on subsets: the list is atomic, one field"
    );
    // another manager: its own label merges in; the same host is shared, no conflict
    let (code, o) = apply(&fake, DR_PATH, "beta", false, dr(json!({ "host": "reviews" }), json!({ "y": "2" }))).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["metadata"]["labels"], json!({ "x": "1", "y": "2" }));
    assert_eq!(fields_of(&o, "beta", "Apply")["f:spec"], json!({ "f:host": {} }));
    assert_eq!(fields_of(&o, "alpha", "Apply")["f:spec"]["f:host"], json!({}), "shared, still alpha's too");
    // a different value for a field alpha owns: 409 naming alpha and the field
    let subsets_b = json!([{ "name": "lane", "labels": { "g": "lane" } }]);
    let (code, o) =
        apply(&fake, DR_PATH, "beta", false, dr(json!({ "subsets": subsets_b }), json!({ "y": "2" }))).await;
    assert_eq!((code, o["reason"].as_str()), (409, Some("Conflict")), "{o}");
    assert_eq!(
        o["message"],
        "Apply failed with 1 conflict: conflict with \"alpha\" using networking.istio.io/v1: .spec.subsets"
    );
    assert_eq!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").unwrap()["spec"]["subsets"], subsets_a);
    // force takes it: the value and the ownership
    let (code, o) = apply(&fake, DR_PATH, "beta", true, dr(json!({ "subsets": subsets_b }), json!({ "y": "2" }))).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["spec"]["subsets"], subsets_b, "atomic: replaced whole");
    assert!(fields_of(&o, "alpha", "Apply")["f:spec"].get("f:subsets").is_none(), "alpha lost it");
    assert_eq!(o["spec"]["host"], "reviews", "beta stopped applying host, alpha still does");
    // alpha stops applying its label: it goes; beta's stays
    let (code, o) = apply(&fake, DR_PATH, "alpha", false, dr(json!({ "host": "reviews" }), json!({}))).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["metadata"]["labels"], json!({ "y": "2" }));
    // a field only beta applied goes when beta stops applying it
    let (_, o) = apply(&fake, DR_PATH, "beta", false, dr(json!({}), json!({ "y": "2" }))).await;
    assert!(o["spec"].get("subsets").is_none(), "{o}");
    assert_eq!(o["spec"]["host"], "reviews", "alpha's");
}

#[tokio::test]
async fn an_apply_to_status_owns_and_changes_only_status() {
    let fake = fake().await;
    let path = "/apis/isogroup.io/v1alpha1/isolationgroups/g";
    let group = |labels: Value, status: Value| {
        json!({ "apiVersion": "isogroup.io/v1alpha1", "kind": "IsolationGroup",
                "metadata": { "name": "g", "labels": labels }, "spec": { "mode": "strict" }, "status": status })
    };
    let (code, o) = apply(&fake, path, "owner", false, group(json!({ "a": "1" }), json!({ "ignored": true }))).await;
    assert_eq!(code, 201, "{o}");
    assert!(o.get("status").is_none(), "status is not written through the main resource: {o}");
    let (code, o) = apply(
        &fake,
        &format!("{path}/status"),
        "isogroup",
        true,
        group(json!({ "b": "2" }), json!({ "installations": { "a": { "conditions": [] } } })),
    )
    .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["metadata"]["labels"], json!({ "a": "1" }), "labels are not written through /status");
    assert_eq!(o["status"], json!({ "installations": { "a": { "conditions": [] } } }));
    let entry = o["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == "isogroup").unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(entry["fieldsV1"], json!({ "f:status": { "f:installations": { "f:a": { "f:conditions": {} } } } }));
}

#[tokio::test]
async fn lists_with_keys_merge_item_by_item() {
    let fake = fake().await;
    let path = "/api/v1/namespaces/bookinfo/pods/p";
    let pod = |container: &str| {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" },
                "spec": { "containers": [{ "name": container, "image": format!("{container}:1") }] } })
    };
    assert_eq!(apply(&fake, path, "alpha", false, pod("app")).await.0, 201);
    let (code, o) = apply(&fake, path, "beta", false, pod("sidecar")).await;
    assert_eq!(code, 200, "{o}");
    let names: Vec<&str> =
        o["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app", "sidecar"], "containers merge on name");
    assert_eq!(
        fields_of(&o, "beta", "Apply")["f:spec"]["f:containers"],
        json!({ "k:{\"name\":\"sidecar\"}": { ".": {}, "f:image": {}, "f:name": {} } })
    );
    // beta changes alpha's container image: a conflict on that field only
    let mut theirs = pod("app");
    theirs["spec"]["containers"][0]["image"] = json!("app:2");
    let (code, o) = apply(&fake, path, "beta", false, theirs).await;
    assert_eq!(code, 409, "{o}");
    assert_eq!(
        o["message"],
        "Apply failed with 1 conflict: conflict with \"alpha\" using v1: .spec.containers[name=\"app\"].image"
    );
}

#[tokio::test]
async fn updates_take_the_fields_they_change_and_apply_conflicts_with_them() {
    let fake = fake().await;
    apply(&fake, DR_PATH, "isogroup", false, dr(json!({ "host": "reviews" }), json!({}))).await;
    // an edit (merge patch, as kubectl edit sends for a custom resource)
    let (code, o) = call(
        &fake,
        "PATCH",
        &format!("{DR_PATH}?fieldManager=kubectl-edit"),
        MERGE,
        json!({ "spec": { "host": "elsewhere", "exportTo": ["."] } }),
    )
    .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(fields_of(&o, "kubectl-edit", "Update"), json!({ "f:spec": { "f:exportTo": {}, "f:host": {} } }));
    assert!(fields_of(&o, "isogroup", "Apply").get("f:spec").is_none(), "isogroup owns no spec field now: {o}");
    let (code, o) = apply(&fake, DR_PATH, "isogroup", false, dr(json!({ "host": "reviews" }), json!({}))).await;
    assert_eq!(code, 409, "{o}");
    assert_eq!(
        o["message"],
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using networking.istio.io/v1: .spec.host"
    );
    assert_eq!(
        o["details"]["causes"],
        json!([{ "reason": "FieldManagerConflict", "message": "conflict with \"kubectl-edit\" using networking.istio.io/v1", "field": ".spec.host" }])
    );
    let (code, o) = apply(&fake, DR_PATH, "isogroup", true, dr(json!({ "host": "reviews" }), json!({}))).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["spec"], json!({ "host": "reviews", "exportTo": ["."] }), "the editor's own field is kept");
    // an apply that changes nothing is no write
    let rv = o["metadata"]["resourceVersion"].clone();
    let (_, again) = apply(&fake, DR_PATH, "isogroup", true, dr(json!({ "host": "reviews" }), json!({}))).await;
    assert_eq!(again["metadata"]["resourceVersion"], rv);
}

#[tokio::test]
async fn resource_version_preconditions_refuse_stale_writes_and_deletes() {
    let fake = fake().await;
    let (_, o) = apply(&fake, DR_PATH, "isogroup", false, dr(json!({ "host": "a" }), json!({}))).await;
    let seen = o["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    fake.put(&destination_rules("v1"), dr(json!({ "host": "b" }), json!({})));
    // apply with the stale version: 409, nothing changed
    let mut stale = dr(json!({ "host": "c" }), json!({}));
    stale["metadata"]["resourceVersion"] = json!(seen);
    let (code, o) = apply(&fake, DR_PATH, "isogroup", true, stale.clone()).await;
    assert_eq!((code, o["reason"].as_str()), (409, Some("Conflict")), "even forced: {o}");
    // update (PUT) with it: 409
    let (code, _) = call(&fake, "PUT", DR_PATH, "application/json", stale.clone()).await;
    assert_eq!(code, 409);
    assert_eq!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").unwrap()["spec"]["host"], "b");
    // delete with it: 409, still there
    let delete =
        |rv: &str| json!({ "kind": "DeleteOptions", "apiVersion": "v1", "preconditions": { "resourceVersion": rv } });
    let (code, o) = call(&fake, "DELETE", DR_PATH, "application/json", delete(&seen)).await;
    assert_eq!(code, 409, "{o}");
    assert!(o["message"].as_str().unwrap().contains("precondition"), "{o}");
    assert!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").is_some());
    // the current version passes
    let current = fake.get(&destination_rules("v1"), "bookinfo", "reviews").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    stale["metadata"]["resourceVersion"] = json!(current);
    let (code, o) = apply(&fake, DR_PATH, "isogroup", true, stale).await;
    assert_eq!(code, 200, "{o}");
    let current = o["metadata"]["resourceVersion"].as_str().unwrap();
    let (code, _) = call(&fake, "DELETE", DR_PATH, "application/json", delete(current)).await;
    assert_eq!(code, 200);
    assert!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").is_none());
    // an apply that would create is not held back by a resourceVersion (the
    // API server wipes it on create): a create cannot be fenced that way...
    let mut late = dr(json!({ "host": "late" }), json!({}));
    late["metadata"]["resourceVersion"] = json!(seen);
    let (code, o) = apply(&fake, DR_PATH, "isogroup", true, late.clone()).await;
    assert_eq!(code, 201, "{o}");
    // ...but by a uid it is
    fake.delete(&destination_rules("v1"), "bookinfo", "reviews");
    late["metadata"]["uid"] = o["metadata"]["uid"].clone();
    let (code, o) = apply(&fake, DR_PATH, "isogroup", true, late).await;
    assert_eq!(code, 409, "{o}");
    assert!(o["message"].as_str().unwrap().contains("uid mismatch"), "{o}");
}

#[tokio::test]
async fn a_held_write_lands_after_the_world_changed_and_the_write_log_shows_the_order() {
    let fake = fake().await;
    let (_, o) = apply(&fake, DR_PATH, "isogroup", false, dr(json!({ "host": "a" }), json!({}))).await;
    let seen = o["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let hold = fake.hold_writes(&destination_rules("v1"), "bookinfo", "reviews");
    // A: a fenced apply, from what it saw
    let mut from_a = dr(json!({ "host": "from-a" }), json!({}));
    from_a["metadata"]["resourceVersion"] = json!(seen);
    let late = tokio::spawn({
        let fake = fake.clone();
        async move { apply(&fake, DR_PATH, "isogroup", true, from_a).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while hold.arrived() == 0 {
        assert!(std::time::Instant::now() < deadline, "A's write never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!late.is_finished(), "held");
    // B writes meanwhile (not through the held path: the test's own write)
    fake.put(&destination_rules("v1"), dr(json!({ "host": "from-b" }), json!({})));
    hold.release();
    let (code, o) = late.await.unwrap();
    assert_eq!(code, 409, "A's stale precondition refused: {o}");
    assert_eq!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").unwrap()["spec"]["host"], "from-b");
    let log: Vec<(&str, u16, bool)> = fake.writes().iter().map(|w| (w.verb, w.code, w.changed)).collect();
    assert_eq!(log, [("apply", 201, true), ("apply", 409, false)]);
    assert_eq!(fake.writes()[1].manager, "isogroup");
}

#[tokio::test]
async fn each_client_can_have_its_own_endpoint_to_be_cut_off_and_told_apart_by() {
    let fake = fake().await;
    let b_url = fake.add_endpoint().await;
    let http = reqwest::Client::new();
    let lease = "/apis/coordination.k8s.io/v1/namespaces/isogroup-system/leases/l";
    let body = json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": { "name": "l" } });
    let post = |base: String| {
        http.post(format!("{base}/apis/coordination.k8s.io/v1/namespaces/isogroup-system/leases"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    assert_eq!(post(b_url.clone()).await.unwrap().status(), 201);
    fake.stall_from(&fake.url, &crate::kube::fake::kinds::leases(), true);
    let a_get = http.get(format!("{}{lease}", fake.url)).timeout(Duration::from_millis(300)).send().await;
    assert!(a_get.is_err_and(|e| e.is_timeout()), "A is cut off");
    assert_eq!(http.get(format!("{b_url}{lease}")).send().await.unwrap().status(), 200, "B is not");
    assert_eq!(fake.writes()[0].endpoint, b_url);
}

#[tokio::test]
async fn fields_a_crd_does_not_declare_are_pruned_or_refused_when_strict() {
    let fake = fake().await;
    let typo = dr(
        json!({ "host": "reviews", "subsetz": [] , "trafficPolicy": { "tls": { "mode": "ISTIO_MUTUAL", "sni2": "x" } } }),
        json!({}),
    );
    let (code, o) = apply(&fake, DR_PATH, "isogroup", false, typo.clone()).await;
    assert_eq!(code, 201, "{o}");
    assert_eq!(
        o["spec"],
        json!({ "host": "reviews", "trafficPolicy": { "tls": { "mode": "ISTIO_MUTUAL" } } }),
        "pruned"
    );
    assert_eq!(fields_of(&o, "isogroup", "Apply")["f:spec"]["f:trafficPolicy"], json!({ "f:tls": { "f:mode": {} } }));
    let (code, o) =
        call(&fake, "PATCH", &format!("{DR_PATH}?fieldManager=kubectl&fieldValidation=Strict"), APPLY, typo).await;
    assert_eq!(code, 400, "{o}");
    assert_eq!(o["message"], ".spec.subsetz: field not declared in schema");
    let (code, o) =
        call(&fake, "PATCH", &format!("{DR_PATH}?fieldValidation=Strict"), MERGE, json!({ "spec": { "hots": "x" } }))
            .await;
    assert_eq!((code, o["message"].as_str()), (400, Some("strict decoding error: unknown field \"spec.hots\"")));
}

#[tokio::test]
async fn a_configmap_over_one_mebibyte_is_invalid() {
    let fake = fake().await;
    let path = "/api/v1/namespaces/isogroup-system/configmaps";
    let cm = |name: &str, size: usize| {
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name },
                "data": { "k": "x".repeat(size - 1) } })
    };
    let (code, o) = call(&fake, "POST", path, "application/json", cm("fits", CONFIGMAP_LIMIT)).await;
    assert_eq!(code, 201, "exactly 1 MiB (key and value) fits");
    assert_eq!(o["metadata"]["name"], "fits");
    let (code, o) = call(&fake, "POST", path, "application/json", cm("over", CONFIGMAP_LIMIT + 1)).await;
    assert_eq!((code, o["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(o["message"], "ConfigMap \"over\" is invalid: []: Too long: may not be more than 1048576 bytes");
    let (code, _) = apply(&fake, &format!("{path}/over"), "isogroup", true, cm("over", CONFIGMAP_LIMIT + 1)).await;
    assert_eq!(code, 422, "apply too");
    assert!(fake.get(&configmaps(), "isogroup-system", "over").is_none());
}

/// Reads watch lines until `n` or the stream ends.
async fn read_lines(resp: &mut reqwest::Response, buf: &mut String, n: usize) -> Vec<Value> {
    let mut lines = vec![];
    while lines.len() < n {
        if let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            lines.push(serde_json::from_str(&line).unwrap());
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(15), resp.chunk()).await.expect("a watch line") {
            Ok(Some(chunk)) => buf.push_str(std::str::from_utf8(&chunk).unwrap()),
            _ => break,
        }
    }
    lines
}

fn labelled(app: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "namespace": "bookinfo", "labels": { "app": app } } })
}

#[tokio::test]
async fn a_selector_watch_sees_an_object_leave_as_deleted_and_come_back_as_added() {
    let fake = fake().await;
    fake.put(&pods(), labelled("r"));
    let mut resp = reqwest::get(format!("{}/api/v1/pods?watch=true&labelSelector=app%3Dr&resourceVersion=1", fake.url))
        .await
        .unwrap();
    let mut buf = String::new();
    assert_eq!(read_lines(&mut resp, &mut buf, 1).await[0]["type"], "ADDED");
    fake.put(&pods(), labelled("other"));
    fake.put(&pods(), labelled("r"));
    let seen = read_lines(&mut resp, &mut buf, 2).await;
    assert_eq!(seen[0]["type"], "DELETED", "it stopped matching");
    assert_eq!(seen[0]["object"]["metadata"]["labels"]["app"], "r", "its last state that matched");
    assert_eq!(seen[1]["type"], "ADDED", "it matches again");
}

#[tokio::test]
async fn a_watch_from_no_version_or_a_streaming_list_starts_with_the_current_state() {
    let fake = fake().await;
    fake.put_quietly(&pods(), labelled("r"));
    let mut resp = reqwest::get(format!("{}/api/v1/namespaces/bookinfo/pods?watch=true", fake.url)).await.unwrap();
    let mut buf = String::new();
    let seen = read_lines(&mut resp, &mut buf, 1).await;
    assert_eq!((seen[0]["type"].as_str(), seen[0]["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("p")));
    let url = format!(
        "{}/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        fake.url
    );
    let mut resp = reqwest::get(url).await.unwrap();
    let mut buf = String::new();
    let seen = read_lines(&mut resp, &mut buf, 2).await;
    assert_eq!(seen[0]["type"], "ADDED");
    assert_eq!(seen[1]["type"], "BOOKMARK");
    assert_eq!(seen[1]["object"]["kind"], "Pod");
    assert_eq!(seen[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    fake.put(&pods(), labelled("s"));
    assert_eq!(read_lines(&mut resp, &mut buf, 1).await[0]["type"], "MODIFIED", "then live");
}

#[tokio::test]
async fn an_object_over_etcds_request_limit_is_too_large() {
    let fake = fake().await;
    let mut big = dr(json!({ "host": "reviews" }), json!({}));
    big["metadata"]["annotations"] = json!({ "note": "x".repeat(crate::kube::fake::OBJECT_LIMIT) });
    let (code, o) = apply(&fake, DR_PATH, "isogroup", false, big).await;
    assert_eq!((code, o["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{o}");
    assert!(fake.get(&destination_rules("v1"), "bookinfo", "reviews").is_none());
}

#[tokio::test]
async fn a_watch_that_falls_behind_is_ended_with_410_not_thinned() {
    let fake = FakeApi::start_with(&every(), "127.0.0.1:0", 8).await;
    let mut resp =
        reqwest::get(format!("{}/api/v1/configmaps?watch=true&resourceVersion=100", fake.url)).await.unwrap();
    // big events, so the unread connection's buffers fill and the server's
    // side of this watch stops being read from its queue
    let big = "x".repeat(64 * 1024);
    for i in 0..400 {
        fake.put(
            &configmaps(),
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("c{i}"), "namespace": "a" },
                    "data": { "k": big } }),
        );
    }
    let mut buf = String::new();
    let lines = read_lines(&mut resp, &mut buf, usize::MAX).await;
    let last = lines.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410)),
        "ended: list again"
    );
    let names: Vec<&str> =
        lines[..lines.len() - 1].iter().map(|l| l["object"]["metadata"]["name"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..names.len()).map(|i| format!("c{i}")).collect();
    assert_eq!(names, expected, "every event up to the end, none skipped");
    assert!(names.len() < 400, "it did fall behind");
    assert_eq!(fake.lagged_watches(), 1);
}

#[tokio::test]
async fn a_deleted_pod_terminates_with_its_endpoints_not_ready_before_it_goes() {
    let fake = fake().await;
    fake.set_pod_grace(Duration::from_secs(3600));
    fake.put(&pods(), labelled("r"));
    fake.put(&slices(), endpoint_slice("reviews", &[("p", true), ("q", true)]));
    let (code, o) = call(&fake, "DELETE", "/api/v1/namespaces/bookinfo/pods/p", "application/json", json!({})).await;
    assert_eq!(code, 200, "{o}");
    let pod = fake.get(&pods(), "bookinfo", "p").expect("still there while terminating");
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    assert_eq!(
        pod["status"]["conditions"][0],
        json!({ "type": "Ready", "status": "False", "reason": "PodTerminating" })
    );
    let slice = fake.get(&slices(), "bookinfo", "reviews-x1").unwrap();
    assert_eq!(slice["endpoints"][0]["conditions"], json!({ "ready": false, "serving": true, "terminating": true }));
    assert_eq!(slice["endpoints"][1]["conditions"]["ready"], true, "the other pod's endpoint untouched");
    // its grace over: gone, its endpoint too
    fake.remove_pod("bookinfo", "p");
    assert!(fake.get(&pods(), "bookinfo", "p").is_none());
    let slice = fake.get(&slices(), "bookinfo", "reviews-x1").unwrap();
    assert_eq!(slice["endpoints"].as_array().unwrap().len(), 1);
    // gracePeriodSeconds 0 removes at once
    fake.put(&pods(), labelled("r"));
    let (code, _) = call(
        &fake,
        "DELETE",
        "/api/v1/namespaces/bookinfo/pods/p",
        "application/json",
        json!({ "gracePeriodSeconds": 0 }),
    )
    .await;
    assert_eq!(code, 200);
    assert!(fake.get(&pods(), "bookinfo", "p").is_none());
}

#[tokio::test]
async fn discovery_tells_kubectl_what_is_served() {
    let fake = fake().await;
    let (code, v) = call(&fake, "GET", "/version", "", Value::Null).await;
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));
    let (_, apis) = call(&fake, "GET", "/apis", "", Value::Null).await;
    let istio = apis["groups"].as_array().unwrap().iter().find(|g| g["name"] == "networking.istio.io").unwrap();
    assert_eq!(istio["preferredVersion"]["version"], "v1");
    let (_, list) = call(&fake, "GET", "/apis/networking.istio.io/v1", "", Value::Null).await;
    let dr = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == "destinationrules").unwrap();
    assert_eq!((dr["kind"].as_str(), dr["namespaced"].as_bool()), (Some("DestinationRule"), Some(true)));
    assert_eq!(dr["shortNames"], json!(["dr"]), "from Istio's CRD");
    assert_eq!(kind_name(&destination_rules("v1alpha3")), "DestinationRule");
    let (_, core) = call(&fake, "GET", "/api/v1", "", Value::Null).await;
    assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "pods" && r["kind"] == "Pod"));
}

#[tokio::test]
async fn core_kinds_take_strategic_merge_patches_custom_resources_merge_patches() {
    let fake = fake().await;
    let path = "/api/v1/namespaces/bookinfo/pods/p";
    fake.put(
        &pods(),
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "namespace": "bookinfo" },
                "spec": { "containers": [{ "name": "app", "image": "app:1" }, { "name": "side", "image": "side:1" }] } }),
    );
    let patch = json!({ "metadata": { "labels": { "a": "b" } },
                        "spec": { "$setElementOrder/containers": [{ "name": "app" }, { "name": "side" }],
                                  "containers": [{ "name": "side", "image": "side:2" }] } });
    let (code, o) = call(&fake, "PATCH", &format!("{path}?fieldManager=kubectl-edit"), STRATEGIC, patch).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(
        o["spec"]["containers"],
        json!([{ "name": "app", "image": "app:1" }, { "name": "side", "image": "side:2" }])
    );
    assert_eq!(o["metadata"]["labels"]["a"], "b");
    assert_eq!(
        fields_of(&o, "kubectl-edit", "Update")["f:spec"],
        json!({ "f:containers": { "k:{\"name\":\"side\"}": { "f:image": {} } } })
    );
    assert!(!fields_of(&o, TEST_MANAGER, "Update").is_null());
    apply(&fake, DR_PATH, "isogroup", false, dr(json!({ "host": "a" }), json!({}))).await;
    let (code, _) = call(&fake, "PATCH", DR_PATH, STRATEGIC, json!({ "spec": { "host": "b" } })).await;
    assert_eq!(code, 415, "no strategic merge for a custom resource, as the API server says");
}

/// kubectl, at least 1.27: the tests that drive the fake with it fail,
/// saying so, where it is missing or older.
fn kubectl() -> PathBuf {
    let bin = std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
    let out = Command::new(&bin).args(["version", "--client", "-o", "json"]).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => panic!("these tests need kubectl >= 1.27 on PATH (or KUBECTL=<path>); {} did not run", bin.display()),
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor: u32 = v["clientVersion"]["minor"].as_str().unwrap_or("0").trim_end_matches('+').parse().unwrap_or(0);
    let major = v["clientVersion"]["major"].as_str().unwrap_or("0");
    assert!(major == "1" && minor >= 27, "these tests need kubectl >= 1.27; {} is {major}.{minor}", bin.display());
    bin
}

struct Kubectl {
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(fake: &FakeApi, dir: &Path) -> Kubectl {
        std::fs::write(dir.join("kubeconfig"), fake.kubeconfig("bookinfo")).unwrap();
        Kubectl { bin: kubectl(), dir: dir.to_owned() }
    }

    /// Runs kubectl (blocking: a test of an external client); (success, stdout + stderr).
    async fn run(&self, args: &[&str], editor: Option<&Path>) -> (bool, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            // discovery cache and the like stay in the test's directory
            .env("HOME", &self.dir)
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .current_dir(&self.dir);
        if let Some(e) = editor {
            cmd.env("KUBE_EDITOR", e);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

#[tokio::test]
async fn kubectl_applies_gets_labels_edits_and_deletes_against_the_fake() {
    let fake = fake().await;
    let dir = std::env::temp_dir().join(format!("isogroup-fake-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let k = Kubectl::new(&fake, &dir);
    std::fs::write(
        dir.join("dr.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  labels: {team: a}\n\
         spec:\n  host: reviews\n  subsets:\n  - name: base\n    labels: {isogroup.io/group: base}\n",
    )
    .unwrap();
    let r = destination_rules("v1");
    let (ok, out) = k.run(&["apply", "--server-side", "-f", "dr.yaml"], None).await;
    assert!(ok, "{out}");
    assert_eq!(fake.manager(&r, "bookinfo", "reviews").as_deref(), Some("kubectl"));
    let (ok, out) = k.run(&["get", "dr", "reviews", "-o", "jsonpath={.spec.host}"], None).await;
    assert_eq!((ok, out.as_str()), (true, "reviews"));
    let (ok, out) = k.run(&["get", "destinationrules"], None).await;
    assert!(ok && out.contains("reviews"), "{out}");
    let (ok, out) = k.run(&["label", "dr", "reviews", "lane=feature-1"], None).await;
    assert!(ok, "{out}");
    assert_eq!(fake.get(&r, "bookinfo", "reviews").unwrap()["metadata"]["labels"]["lane"], "feature-1");
    // edit: the editor changes the host
    let editor = dir.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/host: reviews$/host: reviews.bookinfo.svc.cluster.local/' \"$1\"\n")
        .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = k.run(&["edit", "dr", "reviews"], Some(&editor)).await;
    assert!(ok, "{out}");
    let o = fake.get(&r, "bookinfo", "reviews").unwrap();
    assert_eq!(o["spec"]["host"], "reviews.bookinfo.svc.cluster.local");
    assert_eq!(fields_of(&o, "kubectl-edit", "Update"), json!({ "f:spec": { "f:host": {} } }));
    assert_eq!(fields_of(&o, "kubectl-label", "Update"), json!({ "f:metadata": { "f:labels": { "f:lane": {} } } }));
    // re-applying the file now conflicts with the edit, as on a real cluster
    let (ok, out) = k.run(&["apply", "--server-side", "-f", "dr.yaml"], None).await;
    assert!(!ok && out.contains("conflict with \"kubectl-edit\" using networking.istio.io/v1: .spec.host"), "{out}");
    let (ok, out) = k.run(&["apply", "--server-side", "--force-conflicts", "-f", "dr.yaml"], None).await;
    assert!(ok, "{out}");
    assert_eq!(fake.get(&r, "bookinfo", "reviews").unwrap()["spec"]["host"], "reviews");
    // a pod: strategic merge patches, and delete waits out its termination
    std::fs::write(
        dir.join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {app: r}}\nspec:\n  containers:\n  - {name: app, image: app:1}\n",
    )
    .unwrap();
    let (ok, out) = k.run(&["apply", "--server-side", "-f", "pod.yaml"], None).await;
    assert!(ok, "{out}");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/image: app:1/image: app:2/' \"$1\"\n").unwrap();
    let (ok, out) = k.run(&["edit", "pod", "p1"], Some(&editor)).await;
    assert!(ok, "{out}");
    assert_eq!(fake.get(&pods(), "bookinfo", "p1").unwrap()["spec"]["containers"][0]["image"], "app:2");
    let (ok, out) = k.run(&["label", "pod", "p1", "app-"], None).await;
    assert!(ok, "{out}");
    assert!(fake.get(&pods(), "bookinfo", "p1").unwrap()["metadata"]["labels"].get("app").is_none());
    let (ok, out) = k.run(&["delete", "pod", "p1"], None).await;
    assert!(ok, "{out}");
    assert!(fake.get(&pods(), "bookinfo", "p1").is_none(), "kubectl delete waits until it is gone");
    let (ok, out) = k.run(&["delete", "dr", "reviews"], None).await;
    assert!(ok, "{out}");
    assert!(fake.get(&r, "bookinfo", "reviews").is_none());
    let (ok, out) = k.run(&["get", "dr", "reviews"], None).await;
    assert!(!ok && out.contains("NotFound"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn list_types_in_a_crd_schema_decide_how_applies_merge() {
    use crate::kube::fake::ssa::{apply, Schema, Writer};
    // the shape Istio's ServiceEntry and WasmPlugin CRDs use for keyed lists
    let schema = Schema::from_openapi(
        &json!({ "type": "object", "properties": { "spec": { "type": "object", "properties": {
        "ports": { "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                   "items": { "type": "object", "properties": { "name": { "type": "string" }, "number": { "type": "integer" } } } },
        "hosts": { "type": "array", "x-kubernetes-list-type": "set", "items": { "type": "string" } },
        "addresses": { "type": "array", "items": { "type": "string" } } } } } }),
    );
    let w = |manager| Writer { manager, subresource: None, api_version: "networking.istio.io/v1", time: "t" };
    let obj = |ports: Value, hosts: Value, addresses: Value| {
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": { "name": "se" },
                "spec": { "ports": ports, "hosts": hosts, "addresses": addresses } })
    };
    let a = apply(
        None,
        &obj(json!([{ "name": "http", "number": 80 }]), json!(["a"]), json!(["10.0.0.1"])),
        &schema,
        &w("a"),
        false,
    )
    .unwrap();
    let b = apply(
        Some(&a),
        &obj(json!([{ "name": "grpc", "number": 90 }]), json!(["b"]), json!(["10.0.0.2"])),
        &schema,
        &w("b"),
        false,
    );
    let conflicts = b.unwrap_err();
    assert_eq!(conflicts.0.len(), 1, "only the atomic list conflicts: {conflicts:?}");
    assert_eq!(conflicts.0[0].2, ".spec.addresses");
    let b = apply(
        Some(&a),
        &obj(json!([{ "name": "grpc", "number": 90 }]), json!(["b"]), json!(["10.0.0.1"])),
        &schema,
        &w("b"),
        false,
    )
    .unwrap();
    assert_eq!(
        b["spec"]["ports"],
        json!([{ "name": "http", "number": 80 }, { "name": "grpc", "number": 90 }]),
        "map: by key"
    );
    assert_eq!(b["spec"]["hosts"], json!(["a", "b"]), "set: union");
    assert_eq!(b["spec"]["addresses"], json!(["10.0.0.1"]), "atomic, same value: shared");
}
