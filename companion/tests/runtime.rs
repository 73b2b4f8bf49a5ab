//! Source bindings and runtime rules through the real companion (file
//! store): every endpoint over HTTP, bad input refused naming its field with
//! nothing changed, expiry as a store write, `/v1/resolve?client=`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::time::Duration;

use common::{test_dir, wait_until, Companion};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "runtime-test-token-0123456789";

const TABLE: &str = r#"{
  "groups": { "feature-1": { "fallback": ["team-a"], "description": "<b>f1</b>", "owner": "alice" }, "team-a": {} },
  "services": {
    "reviews": { "hosts": ["reviews"], "clusters": { "base": "reviews-base", "team-a": "reviews-a" } }
  }
}"#;

async fn start() -> Companion {
    let dir = test_dir("runtime");
    std::fs::write(dir.join("table.json"), TABLE).unwrap();
    let args = ["--table".to_owned(), dir.join("table.json").display().to_string()];
    Companion::spawn(dir, Some(TOKEN), &args, None).await
}

fn on_disk(c: &Companion) -> Value {
    serde_json::from_slice(&std::fs::read(c.dir.join("table.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn sources_bind_list_unbind_and_refuse_bad_input() {
    let c = start().await;
    let v0 = c.version().await;
    let (status, body) = c
        .admin(Method::PUT, "/v1/sources/192.0.2.7", Some(json!({"group": "feature-1", "ttl_s": 3600})), Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cidr"], "192.0.2.7/32");
    let expires = body["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 3590..=now + 3610).contains(&expires), "{expires} vs now {now}");
    let v1 = body["version"].as_u64().unwrap();
    assert!(v1 > v0);
    let (status, body) =
        c.admin(Method::PUT, "/v1/sources/10.1.0.0/16", Some(json!({"group": "team-a"})), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    // in the table, in the file (durable), and in the list
    let table = c.table().await;
    assert_eq!(
        table["sources"],
        json!([{"cidr": "192.0.2.7/32", "group": "feature-1", "expires_at": expires}, {"cidr": "10.1.0.0/16", "group": "team-a"}])
    );
    assert_eq!(on_disk(&c)["sources"], table["sources"]);
    let list: Value = c.get("/v1/sources").await.json().await.unwrap();
    assert_eq!(list["sources"], table["sources"]);

    // resolve by client: longest prefix, then nothing; group= wins
    let cases: &[(&str, &str, Value)] = &[
        (
            "client=192.0.2.7",
            "reviews-a",
            json!({"by": "source", "field": "sources[0]", "cidr": "192.0.2.7/32", "expires_at": expires}),
        ),
        (
            "client=10.1.9.9",
            "reviews-a",
            json!({"by": "source", "field": "sources[1]", "cidr": "10.1.0.0/16", "expires_at": null}),
        ),
        ("client=192.0.2.8", "reviews-base", json!({"by": "none"})),
        ("client=192.0.2.7&group=base", "reviews-base", json!({"by": "group"})),
    ];
    for (query, cluster, why) in cases {
        let got: Value = c.get(&format!("/v1/resolve?service=reviews&{query}")).await.json().await.unwrap();
        assert_eq!((&got["cluster"], &got["picked_by"]), (&json!(cluster), why), "{query}: {got}");
    }
    let (status, body) = (c.get("/v1/resolve?service=reviews&client=nope").await.status(), ());
    assert_eq!((status.as_u16(), body), (400, ()));

    // hostile input: 400 naming the field, nothing changed
    let version = c.version().await;
    let bad: &[(&str, Value, &str)] = &[
        ("/v1/sources/300.0.0.1", json!({"group": "team-a"}), "ip: "),
        ("/v1/sources/10.1.2.3/16", json!({"group": "team-a"}), "prefix_len: "),
        ("/v1/sources/10.1.0.0/40", json!({"group": "team-a"}), "prefix_len: "),
        ("/v1/sources/10.0.0.1", json!({"group": "<script>x</script>"}), "group: "),
        ("/v1/sources/10.0.0.1", json!({"group": "team-a", "ttl_s": 0}), "ttl_s: "),
        ("/v1/sources/10.0.0.1", json!({"group": "team-a", "ttl_s": 2_592_001}), "ttl_s: "),
        ("/v1/sources/10.0.0.1", json!({"group": "team-a", "ttl_s": "1h"}), "ttl_s: "),
        ("/v1/sources/10.0.0.1", json!({"group": "team-a", "extra": 1}), "extra: "),
        // a lane the table does not know
        ("/v1/sources/10.0.0.1", json!({"group": "ghost"}), "group: the table knows no group \"ghost\""),
    ];
    for (path, body, field) in bad {
        let (status, err) = c.admin(Method::PUT, path, Some(body.clone()), Some(TOKEN)).await;
        assert_eq!(status, 400, "{path} {body}: {err}");
        assert!(err["detail"].as_str().unwrap().starts_with(field), "{path} {body}: {err}");
    }
    let (status, _) = c.admin(Method::PUT, "/v1/sources/10.0.0.1", Some(json!({"group": "team-a"})), None).await;
    assert_eq!(status, 401);
    let (status, _) = c.admin(Method::DELETE, "/v1/sources/10.0.0.1", None, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, err) = c.admin(Method::DELETE, "/v1/sources/10.0.0.1", None, Some(TOKEN)).await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_bound")), "{err}");
    assert_eq!(c.version().await, version, "nothing above changed the table");

    let (status, body) = c.admin(Method::DELETE, "/v1/sources/10.1.0.0/16", None, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        c.table().await["sources"],
        json!([{"cidr": "192.0.2.7/32", "group": "feature-1", "expires_at": expires}])
    );
}

#[tokio::test]
async fn an_expired_binding_is_deleted_by_a_store_write() {
    let c = start().await;
    let (status, body) =
        c.admin(Method::PUT, "/v1/sources/127.0.0.2", Some(json!({"group": "team-a", "ttl_s": 1})), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let bound = body["version"].as_u64().unwrap();
    // the timer deletes it (within a few seconds on a loaded machine): a new
    // version, in the file too
    wait_until("the expired binding deleted", Duration::from_secs(15), async || {
        c.table().await.get("sources").is_none()
    })
    .await;
    assert!(c.version().await > bound);
    assert!(on_disk(&c).get("sources").is_none());
    let got: Value = c.get("/v1/resolve?service=reviews&client=127.0.0.2").await.json().await.unwrap();
    assert_eq!(got["picked_by"], json!({"by": "none"}));
}

#[tokio::test]
async fn rules_are_replaced_whole_and_a_bad_one_changes_nothing() {
    let c = start().await;
    let rules = json!([
        {"header": "x-user", "values": ["alice"], "group": "feature-1"},
        {"cookie": "team-lane", "group_from_value": true},
        {"source_cidrs": ["192.0.2.0/24"], "group": "team-a"},
    ]);
    let (status, body) = c.admin(Method::PUT, "/v1/rules", Some(rules.clone()), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let v = c.version().await;
    let got: Value = c.get("/v1/rules").await.json().await.unwrap();
    assert_eq!(got["rules"], rules);
    assert_eq!(on_disk(&c)["rules"], rules);
    // an address-only rule answers resolve?client=
    let got: Value = c.get("/v1/resolve?service=reviews&client=192.0.2.9").await.json().await.unwrap();
    assert_eq!(
        (&got["cluster"], &got["picked_by"]),
        (&json!("reviews-a"), &json!({"by": "rule", "field": "rules[2]"}))
    );

    let bad: &[(Value, &str)] = &[
        (
            json!([{"header": "x-user", "values": ["a"], "group": "g"}, {"percent": 101, "hash_header": "x-user", "group": "g"}]),
            "rules[1].percent",
        ),
        (json!([{"header": "x-user", "values": ["a"]}]), "rules[0].group"),
        (json!([{"header": "x-user", "values": ["a"], "group": "Not A Group"}]), "rules[0].group"),
        (json!([{"header": "x-user", "regex": "(", "group": "g"}]), "rules[0].regex"),
        (json!([{"header": "x-user", "values": ["a"], "group": "g", "colour": "red"}]), "rules[0]"),
        (json!({"header": "x-user"}), "rules"),
    ];
    for (body, field) in bad {
        let (status, err) = c.admin(Method::PUT, "/v1/rules", Some(body.clone()), Some(TOKEN)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["detail"].as_str().unwrap().contains(field), "{body}: want {field} in {err}");
    }
    let (status, _) = c.admin(Method::PUT, "/v1/rules", Some(json!([])), None).await;
    assert_eq!(status, 401);
    assert_eq!(c.version().await, v, "nothing changed");
    assert_eq!(c.get("/v1/rules").await.json::<Value>().await.unwrap()["rules"], rules);

    // a whole-table write keeps them unless it names them
    let mut table: Value = serde_json::from_str(TABLE).unwrap();
    let (status, body) = c.put_table(&table).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.table().await["rules"], rules);
    table["rules"] = json!([]);
    let (status, body) = c.put_table(&table).await;
    assert_eq!(status, 200, "{body}");
    assert!(c.table().await.get("rules").is_none());
}

#[tokio::test]
async fn the_console_is_served_with_its_headers_and_knows_the_caller() {
    let c = start().await;
    let page = c.get("/ui/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("/ui/app.js"));
    let me: Value = c.get("/v1/whoami").await.json().await.unwrap();
    assert_eq!(me, json!({"address": "127.0.0.1"}));
    let console: Value = c.get("/v1/console").await.json().await.unwrap();
    assert_eq!(console, json!({"admin": true, "gateway_url": null, "base_group": "base"}));
    let m: Value = c.get("/v1/matrix").await.json().await.unwrap();
    let f1 = m["groups"].as_array().unwrap().iter().find(|g| g["name"] == "feature-1").unwrap().clone();
    assert_eq!((&f1["description"], &f1["owner"]), (&json!("<b>f1</b>"), &json!("alice")));
}
