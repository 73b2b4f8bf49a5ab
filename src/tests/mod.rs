//! Native unit tests of the filter over the fake host: the request path, the
//! failure paths and the table sync, in milliseconds. What only a real Envoy
//! proves (route re-picking, workers, wasm itself) stays in `tests/`.

mod abi;
mod assist;
#[cfg(feature = "table-deltas")]
mod delta;
mod edge;
pub mod envoy;
mod propagation;
mod request;
mod sync;

use std::rc::Rc;

use crate::proxy::{Action, HttpContext, RootContext};

use crate::fake_host::{FakeHost, Process};
use crate::root::Root;

/// The demo's table: a has lanes, b has only base, team-s is strict.
pub const TABLE: &str = r#"{
  "version": 7,
  "groups": {
    "feature-1": { "fallback": [] },
    "feature-2": { "fallback": ["feature-1"] },
    "team-s": { "mode": "strict" }
  },
  "services": {
    "a": { "hosts": ["a"], "clusters": { "base": "a-base", "feature-1": "a-feature-1", "team-s": "a-team-s" } },
    "b": { "hosts": ["b"], "clusters": { "base": "b-base" } }
  }
}"#;

pub fn inline_config(extra: &str) -> String {
    format!(r#"{{ {extra} "table": {{"inline": {TABLE}}} }}"#)
}

pub fn companion_config(cluster: &str) -> String {
    format!(
        r#"{{"table": {{"companion": {{"cluster": "{cluster}", "authority": "companion", "path": "/v1/table", "wait_s": 25}}}}}}"#
    )
}

/// A configured root context on `process`, with its host.
pub fn configured(process: &Rc<Process>, config: &str) -> (Root<FakeHost>, FakeHost) {
    let host = FakeHost::new(process, config);
    let mut root = Root::new(host.clone());
    assert!(root.on_configure(config.len()), "config refused: {:?}", process.log.borrow());
    (root, host)
}

/// A poller and a worker of one companion source on a new process (neither
/// ticked yet): the process, the poller and its host, the worker.
pub fn poller_and_worker() -> (Rc<Process>, Root<FakeHost>, FakeHost, Root<FakeHost>) {
    let process = Process::new();
    let config = companion_config("companion");
    let (poller, host) = configured(&process, &config);
    let (worker, _) = configured(&process, &config);
    (process, poller, host, worker)
}

/// One request through a new HTTP context: the action and the context (for
/// the response side).
pub fn send(root: &mut Root<FakeHost>, host: &FakeHost, headers: &[(&str, &str)]) -> (Action, Box<dyn HttpContext>) {
    host.set_request(headers);
    let mut ctx = root.create_http_context(1).unwrap_or_else(|| unreachable!("not configured"));
    let action = ctx.on_http_request_headers(headers.len(), true);
    (action, ctx)
}

/// Every status the proxy-wasm ABI defines keeps its own name; a code it
/// does not define is shown by number, never read as another status.
#[test]
fn every_host_status_is_told_apart() {
    use crate::proxy::Status;
    let names = [
        "Ok",
        "NotFound",
        "BadArgument",
        "SerializationFailure",
        "ParseFailure",
        "BadExpression",
        "InvalidMemoryAccess",
        "Empty",
        "CasMismatch",
        "ResultMismatch",
        "InternalFailure",
        "BrokenConnection",
        "Unimplemented",
    ];
    for (code, name) in (0u32..).zip(names) {
        assert_eq!(Status::from_raw(code).name(), Some(name), "status {code}");
    }
    assert_eq!(Status::from_raw(13).name(), None);
    let e = crate::host::HostError { call: "get_property", status: Status::from_raw(99) };
    assert_eq!(e.to_string(), "get_property failed: status 99");
}
