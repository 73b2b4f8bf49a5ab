//! Per request: sanitise → extract → decide → rewrite headers or answer
//! locally; on the response, annotate. The logic lives in core; this file
//! only reads headers once and executes what core returns.
//!
//! Failure paths keep the SPEC's promises: a client-sent routing header never
//! survives (if it cannot be removed, the stream is reset), and a fail-fast
//! request never reaches an upstream (if it cannot be answered, the stream is
//! reset).

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use alloc::rc::Rc;

use crate::proxy::{Action, Context, GrpcStatusCode, HttpContext, LogLevel};
use isogroup_core::cidr;
use isogroup_core::request::{self, Edit, LocalReply, Peer, Served};
use isogroup_core::text::text_of;
use isogroup_core::{cat, Decision, Table};

use crate::host::{HeaderMap, Host, HostError, HostResult};
use crate::metrics::Counter;
use crate::propagation::Seen;
use crate::vm::Vm;

pub struct Request<H> {
    vm: Rc<Vm<H>>,
    /// `x-isogroup-served`, written at response time from the table the
    /// request was decided against, held until then only: a superseded
    /// table does not outlive the response headers of its streams.
    served: Option<(Served, Rc<Table>)>,
    explanation: Option<String>,
    /// Untrusted edge peer: isogroup response headers do not go back to it.
    strip_annotations: bool,
}

impl<H: Host> Request<H> {
    pub fn new(vm: Rc<Vm<H>>) -> Self {
        Request { vm, served: None, explanation: None, strip_annotations: false }
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

    /// A host call that failed where the request can go on: logged.
    fn warn_if_failed(&self, result: HostResult<()>) {
        if let Err(e) = result {
            self.warn(e);
        }
    }

    fn warn(&self, e: HostError) {
        self.vm.log(LogLevel::Warn, &text_of(&e));
    }

    /// Ends the stream without forwarding it.
    fn reset(&self, why: &str) -> Action {
        self.vm.log(LogLevel::Warn, &cat!(why, ": resetting the stream"));
        if let Err(e) = self.vm.host.reset_request() {
            // Paused and unanswered is still better than forwarded.
            self.vm.log(LogLevel::Error, &cat!(e, "; the request stays paused"));
        }
        Action::Pause
    }

    fn peer_ip(&self) -> Option<core::net::IpAddr> {
        let address = self.vm.host.property(&["source", "address"]).ok()??;
        cidr::peer_ip(&address)
    }

    fn apply(&self, edit: &Edit<'_>) -> HostResult<()> {
        let host = &self.vm.host;
        match edit {
            Edit::Set(name, value) => host.set_request_header(name, value),
            Edit::Add(name, value) => host.add_request_header(name, value),
            Edit::Remove(name) => host.remove_request_header(name),
        }
    }

    fn send_reply(&self, reply: &LocalReply) -> HostResult<()> {
        let host = &self.vm.host;
        if reply.grpc {
            host.send_grpc_reply(
                GrpcStatusCode::Unavailable,
                &reply.body,
                &[("x-isogroup-failfast", reply.service.as_bytes())],
            )
        } else {
            let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(reply.headers.len());
            for (k, v) in &reply.headers {
                headers.push((*k, v.as_bytes()));
            }
            host.send_local_reply(u32::from(reply.status), &headers, reply.body.as_bytes())
        }
    }
}

impl<H> Context for Request<H> {}

impl<H: Host> HttpContext for Request<H> {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Unreadable headers: decided as none (a pass-through), which still
        // removes both routing headers, or resets the stream.
        let map = self.vm.host.request_headers().unwrap_or_else(|e| {
            self.warn(e);
            HeaderMap::from_bytes(Vec::new())
        });
        let headers = map.pairs();
        #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
        if headers.iter().any(|(name, _)| *name == "x-isogroup-test-trap") {
            // Before anything is sanitised: the host must not forward this.
            core::arch::wasm32::unreachable();
        }
        let settings = &self.vm.settings;
        // The table in force when the request arrived.
        let table = self.vm.table();
        let now_s = self.vm.clock_ms.get() / 1000;
        let peer = match &settings.edge {
            Some(edge) if edge.needs_peer(table.as_deref()) => Peer { ip: self.peer_ip(), now_s },
            _ => Peer { ip: None, now_s },
        };
        let mut regex_scratch = self.vm.regex_scratch.take();
        let mut incoming = request::scan_with(&headers, settings, peer, table.as_deref(), &mut regex_scratch);
        self.vm.regex_scratch.set(regex_scratch);
        if let Some(reply) = incoming.join(settings, table.as_deref()) {
            return match self.send_reply(&reply) {
                Ok(()) => Action::Pause,
                Err(e) => self.reset(&cat!("join not answered (", e, ")")),
            };
        }
        let seen = match &settings.assist {
            Some(a) => crate::assist::apply(&mut incoming, a, &self.vm),
            None => Seen::Nothing,
        };
        self.strip_annotations = !incoming.trusted;
        for _ in 0..incoming.invalid {
            self.vm.metrics.count(Counter::InvalidGroup);
        }
        let decision = table.as_deref().map(|t| incoming.decide(t));
        self.count(decision.as_ref());
        if let Some(r) = &self.vm.reports {
            let destination = match &decision {
                Some(Decision::Route(route)) => Some(route.service),
                Some(Decision::FailFast(f)) => Some(f.service),
                _ => None,
            };
            r.observe(
                &self.vm.metrics,
                seen,
                destination,
                incoming.trace_id.unwrap_or_default(),
                incoming.group.as_ref(),
            );
        }
        if incoming.debug && incoming.trusted {
            self.explanation =
                Some(request::explain(&incoming, decision.as_ref(), table.as_ref().map(|t| t.version()), &self.vm.id));
        }
        if let Some(Decision::FailFast(f)) = &decision {
            let reply = incoming.local_reply(f, settings);
            return match self.send_reply(&reply) {
                Ok(()) => Action::Pause,
                Err(e) => self.reset(&cat!("fail-fast for ", reply.service, " not answered (", e, ")")),
            };
        }
        // After a routing header fails, nothing more is written: the stream
        // is reset. Both are set or removed on every path that forwards,
        // whatever the scan saw.
        let mut unwritten = None;
        incoming.each_edit(decision.as_ref(), settings, |edit| {
            if unwritten.is_some() {
                return;
            }
            if let Err(e) = self.apply(&edit) {
                let name = match &edit {
                    Edit::Set(n, _) | Edit::Add(n, _) | Edit::Remove(n) => *n,
                };
                if name == settings.cluster_header || name == settings.target_header {
                    // A routing header left as the client sent it could pick a cluster.
                    unwritten = Some((name, e));
                } else {
                    self.warn(e);
                }
            }
        });
        if let Some((name, e)) = unwritten {
            return self.reset(&cat!("routing header ", name, " not written (", e, ")"));
        }
        // A match, not `Option::zip` (a generic body of its own in the wasm).
        self.served = match (incoming.served(decision.as_ref(), settings), table) {
            (Some(served), Some(table)) => Some((served, table)),
            _ => None,
        };
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let host = &self.vm.host;
        if self.strip_annotations {
            // Inner hops annotated too: remove theirs, add none.
            for name in ["x-isogroup-served", "x-isogroup-decision"] {
                self.warn_if_failed(host.remove_response_header(name));
            }
            return Action::Continue;
        }
        if let Some((served, table)) = self.served.take() {
            let mut value = self.vm.scratch.take();
            value.clear();
            served.write(&table, &mut value);
            let written = host.add_response_header("x-isogroup-served", &value);
            self.vm.scratch.set(value);
            self.warn_if_failed(written);
        }
        if let Some(explanation) = self.explanation.take() {
            self.warn_if_failed(host.add_response_header("x-isogroup-decision", explanation.as_bytes()));
        }
        Action::Continue
    }
}
