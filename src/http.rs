//! Per request: sanitise → extract → decide → rewrite headers or answer
//! locally; on the response, annotate. The logic lives in core; this file
//! only reads headers once and executes what core returns.

use std::rc::Rc;

use isogroup_core::cidr;
use isogroup_core::request::{self, Edit, LocalReply, Peer};
use isogroup_core::{Decision, Table};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, GrpcStatusCode, LogLevel};

use crate::host::{self, HostResult};
use crate::metrics::Counter;
use crate::vm::Vm;

pub struct Request {
    vm: Rc<Vm>,
    /// The table in force when the request arrived.
    table: Option<Rc<Table>>,
    served: Option<String>,
    explanation: Option<String>,
    /// Untrusted edge peer: isogroup response headers do not go back to it.
    strip_annotations: bool,
}

impl Request {
    pub fn new(vm: Rc<Vm>) -> Self {
        let table = vm.table();
        Request { vm, table, served: None, explanation: None, strip_annotations: false }
    }

    fn count(&self, decision: Option<&Decision<'_>>) {
        let m = &self.vm.metrics;
        match decision {
            None | Some(Decision::PassThrough) => m.count(Counter::Passthrough),
            Some(Decision::Route(r)) => {
                m.count(Counter::Routed);
                if r.fallback {
                    m.count(Counter::Fallback);
                }
            }
            Some(Decision::FailFast(_)) => m.count(Counter::Failfast),
        }
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let map = match host::request_headers() {
            Ok(h) => h,
            Err(e) => {
                warn(&e.to_string());
                return Action::Continue;
            }
        };
        let headers = map.pairs();
        let settings = &self.vm.settings;
        let peer = match &settings.edge {
            Some(edge) if edge.needs_peer() => Peer { ip: peer_ip() },
            _ => Peer::default(),
        };
        let mut incoming = request::scan(&headers, settings, peer);
        if let Some(a) = &settings.assist {
            crate::assist::apply(&mut incoming, a, &self.vm);
        }
        self.strip_annotations = !incoming.trusted;
        for _ in 0..incoming.invalid {
            self.vm.metrics.count(Counter::InvalidGroup);
        }
        let table = self.table.clone();
        let decision = table.as_deref().map(|t| incoming.decide(t));
        self.count(decision.as_ref());
        if incoming.debug && incoming.trusted {
            self.explanation =
                Some(request::explain(&incoming, decision.as_ref(), table.as_ref().map(|t| t.version()), &self.vm.id));
        }
        if let Some(Decision::FailFast(f)) = &decision {
            let reply = incoming.local_reply(f, settings);
            return match send_reply(&reply) {
                Ok(()) => Action::Pause,
                Err(e) => {
                    warn(&e.to_string());
                    Action::Continue
                }
            };
        }
        for edit in incoming.edits(decision.as_ref(), settings) {
            if let Err(e) = apply(&edit) {
                warn(&e.to_string());
            }
        }
        if let (true, Some(Decision::Route(r))) = (settings.annotate_response, &decision) {
            self.served = Some(request::served_value(r.service, r.serving, r.fallback));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.strip_annotations {
            // Inner hops annotated too: remove theirs, add none.
            for name in ["x-isogroup-served", "x-isogroup-decision"] {
                if let Err(e) = host::remove_response_header(name) {
                    warn(&e.to_string());
                }
            }
            return Action::Continue;
        }
        let annotations = [("x-isogroup-served", self.served.take()), ("x-isogroup-decision", self.explanation.take())];
        for (name, value) in annotations {
            if let Some(value) = value {
                if let Err(e) = host::add_response_header(name, &value) {
                    warn(&e.to_string());
                }
            }
        }
        Action::Continue
    }
}

/// The direct peer's IP (`source.address`, port stripped).
fn peer_ip() -> Option<std::net::IpAddr> {
    let address = host::property(&["source", "address"]).ok()??;
    cidr::peer_ip(&address)
}

fn apply(edit: &Edit<'_>) -> HostResult<()> {
    match edit {
        Edit::Set(name, value) => host::set_request_header(name, value),
        Edit::Add(name, value) => host::add_request_header(name, value),
        Edit::Remove(name) => host::remove_request_header(name),
    }
}

fn send_reply(reply: &LocalReply) -> HostResult<()> {
    if reply.grpc {
        host::send_grpc_reply(
            GrpcStatusCode::Unavailable,
            &reply.body,
            vec![("x-isogroup-failfast", reply.service.as_bytes())],
        )
    } else {
        let headers = vec![("x-isogroup-failfast", reply.service.as_str()), ("content-type", "application/json")];
        host::send_local_reply(u32::from(reply.status), headers, reply.body.as_bytes())
    }
}

fn warn(message: &str) {
    host::log(LogLevel::Warn, &format!("isogroup: {message}"));
}
