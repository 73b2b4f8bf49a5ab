//! The native poller's table and deltas, without Envoy: what it asks for,
//! and what each answer leaves it holding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use isogroup_core::{CompanionSource, Limits, Table};
use isogroup_test_support::table_changes::{diff, first_table, mutate, Rng};
use serde_json::{json, Value};

use super::{Holding, Taken};

fn source() -> CompanionSource {
    let mut source = CompanionSource::with_defaults("companion".into(), "companion".into());
    source.path = "/v1/table".into();
    source.wait_s = 25;
    source
}

fn take(holding: &mut Holding, table: &Value, delta: bool) -> Taken {
    holding.take(table.to_string().as_bytes(), delta, "base", &Limits::default())
}

/// What a whole fetch of `table` compiles to, as text (equal for equal tables).
fn compiled_whole(table: &Value) -> String {
    let bytes = table.to_string();
    format!("{:?}", Table::from_companion_json(bytes.as_bytes(), "base", &Limits::default(), true).unwrap().0)
}

fn newer(taken: Taken) -> String {
    match taken {
        Taken::Newer { table, .. } => format!("{table:?}"),
        other => panic!("expected a newer table, got {other:?}"),
    }
}

fn v100() -> Value {
    let mut table = first_table();
    table["version"] = json!(100);
    for i in 0..20 {
        let name = format!("s{i}");
        table["services"][&name] = json!({"hosts": [&name], "clusters": {"base": format!("{name}-base")}});
    }
    table
}

#[test]
fn the_poll_asks_for_a_delta_onto_the_table_held_as_read() {
    let mut holding = Holding::default();
    assert_eq!(holding.poll_path(&source()), "/v1/table", "nothing held: the whole table");
    let old = v100();
    newer(take(&mut holding, &old, false));
    assert_eq!(holding.poll_path(&source()), "/v1/table?after=100&epoch=1000-aa&wait=25&delta=1");
    let mut new = old.clone();
    new["version"] = json!(101);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base", "feature-1": "c-f1"}});
    new["services"].as_object_mut().unwrap().remove("s3");
    let table = newer(take(&mut holding, &diff(&old, &new), true));
    assert_eq!(table, compiled_whole(&new), "the delta makes exactly the table a whole fetch gives");
    assert_eq!(holding.held().map(|h| h.version), Some(101));
    assert_eq!(holding.poll_path(&source()), "/v1/table?after=101&epoch=1000-aa&wait=25&delta=1");
    // A source path with a query keeps it.
    let mut with_query = source();
    with_query.path = "/v1/table?lane=x".into();
    assert_eq!(holding.poll_path(&with_query), "/v1/table?lane=x&after=101&epoch=1000-aa&wait=25&delta=1");
}

#[test]
fn without_a_valid_epoch_no_epoch_and_no_delta_are_asked() {
    for (epoch, want) in
        [(Value::Null, "/v1/table?after=100&wait=25"), (json!("not an epoch & more"), "/v1/table?after=100&wait=25")]
    {
        let mut table = v100();
        table["epoch"] = epoch;
        let mut holding = Holding::default();
        newer(take(&mut holding, &table, false));
        assert_eq!(holding.poll_path(&source()), want);
    }
}

#[test]
fn a_bad_delta_is_discarded_and_the_next_poll_asks_for_the_whole_table() {
    let mut holding = Holding::default();
    let mut held = v100();
    newer(take(&mut holding, &held, false));
    type Spoil = fn(&mut Value);
    let cases: [(&str, Spoil); 9] = [
        ("an unknown key", |d| d["rename"] = json!({})),
        ("an unknown base key", |d| d["base"]["revision"] = json!(1)),
        ("a wrong base version", |d| d["base"]["version"] = json!(99)),
        ("a wrong base epoch", |d| d["base"]["epoch"] = json!("999-zz")),
        ("an invalid result", |d| d["set"]["c"]["clusters"] = json!({"feature-1": "x"})),
        ("a removal of a service not held", |d| d["remove"] = json!(["zz"])),
        ("a removal out of order", |d| d["remove"] = json!(["s2", "s1"])),
        ("a version not newer than its base", |d| d["version"] = d["base"]["version"].clone()),
        ("garbage", |d| *d = json!("{")),
    ];
    for (what, spoil) in cases {
        let version = held["version"].as_u64().unwrap();
        let mut new = held.clone();
        new["version"] = json!(version + 1);
        new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
        let mut delta = diff(&held, &new);
        spoil(&mut delta);
        assert!(holding.poll_path(&source()).ends_with("&delta=1"), "{what}");
        let taken = take(&mut holding, &delta, true);
        assert!(matches!(taken, Taken::Discarded(_)), "{what}: {taken:?}");
        assert_eq!(holding.held().map(|h| h.version), Some(version), "{what}: the table in force stays");
        // The next poll asks for the whole table after the one held.
        assert_eq!(holding.poll_path(&source()), format!("/v1/table?after={version}&epoch=1000-aa&wait=25"), "{what}");
        // A good delta now has nothing to apply onto: discarded too.
        assert!(matches!(take(&mut holding, &diff(&held, &new), true), Taken::Discarded(_)), "{what}");
        assert_eq!(newer(take(&mut holding, &new, false)), compiled_whole(&new), "{what}");
        assert!(holding.poll_path(&source()).ends_with("&delta=1"), "{what}: deltas again after a whole table");
        held = new;
    }
}

#[test]
fn a_whole_table_not_newer_or_invalid_leaves_the_table_held() {
    let mut holding = Holding::default();
    let held = v100();
    newer(take(&mut holding, &held, false));
    let mut older = held.clone();
    older["version"] = json!(99);
    assert!(matches!(take(&mut holding, &older, false), Taken::NotNewer));
    let mut invalid = held.clone();
    invalid["version"] = json!(101);
    invalid["services"]["s1"]["clusters"] = json!({"feature-1": "x"});
    assert!(matches!(take(&mut holding, &invalid, false), Taken::Rejected(_)));
    assert_eq!(holding.held().map(|h| h.version), Some(100));
    // Still held as read: the next delta applies onto it.
    let mut new = held.clone();
    new["version"] = json!(102);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
    assert!(holding.poll_path(&source()).ends_with("&delta=1"));
    assert_eq!(newer(take(&mut holding, &diff(&held, &new), true)), compiled_whole(&new));
}

/// The differential test: over random change sequences (valid and invalid
/// tables, now and then a new epoch), the poller takes each change as a
/// delta when it asked for one (spoilt now and then: an unknown key, an
/// unknown base key, a wrong base), else whole. After every change it holds
/// exactly the table a whole fetch gives (the last valid one); a delta that
/// cannot apply is discarded, and then the whole table is fetched.
#[test]
fn random_changes_end_with_the_table_a_whole_fetch_gives_or_fall_back() {
    let (mut applied, mut discarded) = (0, 0);
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut holding = Holding::default();
        let mut published = first_table();
        newer(take(&mut holding, &published, false));
        let mut held = published.clone();
        for step in 0..40u64 {
            let what = format!("seed {seed} step {step}");
            let mut new = published.clone();
            mutate(&mut rng, &mut new);
            new["version"] = json!(step + 2);
            let reseeded = rng.below(25) == 0;
            if reseeded {
                new["epoch"] = json!(format!("{}-bb", 2000 + step));
            }
            let valid =
                Table::from_companion_json(new.to_string().as_bytes(), "base", &Limits::default(), true).is_ok();
            let path = holding.poll_path(&source());
            // The companion serves a delta from the poll's base, unless the
            // epoch changed (history lost): then the whole table.
            let taken = if path.ends_with("&delta=1") && !reseeded {
                assert!(path.contains(&format!("after={}&", held["version"])), "{what}: {path}");
                let mut delta = diff(&held, &new);
                let spoil: Option<fn(&mut Value, u64)> = match rng.below(10) {
                    0 => Some(|d, _| d["extra"] = json!(1)),
                    1 => Some(|d, _| d["base"]["rev"] = json!(1)),
                    2 => Some(|d, step| d["base"]["version"] = json!(step + 500)),
                    3 => Some(|d, _| d["base"]["epoch"] = json!("999-zz")),
                    _ => None,
                };
                let spoilt = spoil.map(|spoil| spoil(&mut delta, step));
                match take(&mut holding, &delta, true) {
                    Taken::Discarded(e) => {
                        assert!(spoilt.is_some() || !valid, "{what}: a good delta discarded: {e}");
                        discarded += 1;
                        let path = holding.poll_path(&source());
                        assert!(!path.contains("delta=1"), "{what}: the whole table is fetched at once: {path}");
                        take(&mut holding, &new, false)
                    }
                    taken => {
                        assert!(spoilt.is_none() && valid, "{what}: a bad delta applied");
                        applied += 1;
                        taken
                    }
                }
            } else {
                take(&mut holding, &new, false)
            };
            match taken {
                Taken::Newer { table, .. } => {
                    assert!(valid, "{what}: an invalid table taken");
                    assert_eq!(format!("{table:?}"), compiled_whole(&new), "{what}");
                }
                Taken::Rejected(_) => assert!(!valid, "{what}: a valid table rejected"),
                other => panic!("{what}: {other:?}"),
            }
            published = new;
            if valid {
                held = published.clone();
            }
            assert_eq!(holding.held().map(|h| h.version), held["version"].as_u64(), "{what}");
        }
    }
    assert!(applied > 300 && discarded > 250, "{applied} applied, {discarded} discarded");
}
