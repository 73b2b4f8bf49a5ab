//! Both worker VMs serve: exact connection balance spreads new connections,
//! and the VM id in the debug header proves two different VMs decided.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::{header_values, http, Build, Mesh};

async fn both_workers_route(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    // Ten clients, each keeping its one connection open: exact balance puts
    // five on each worker, and every request rides its client's connection.
    let clients: Vec<reqwest::Client> = (0..10).map(|_| http()).collect();
    let mut per_vm: BTreeMap<String, u32> = BTreeMap::new();
    for client in clients.iter().cycle().take(40) {
        let resp = mesh
            .request(client, "c")
            .header("x-isogroup", "feature-1")
            .header("x-isogroup-debug", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let decision = header_values(&resp, "x-isogroup-decision").join("");
        assert!(decision.contains("serving=base cluster=c-base fallback"), "{decision}");
        let vm = decision.split(';').next().unwrap_or_default().to_owned();
        *per_vm.entry(vm).or_default() += 1;
    }
    assert_eq!(per_vm.len(), 2, "two worker VMs decided: {per_vm:?}");
    assert!(per_vm.values().all(|&n| n == 20), "five connections per worker, four requests each: {per_vm:?}");
}

on_both_builds!(both_workers_route);
