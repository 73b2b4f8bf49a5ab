//! A fake host for native unit tests: one `Process` (shared data, metrics,
//! log) and any number of VMs on it, each with its own request, response,
//! properties, clock, HTTP-call answer and recorded calls. A call named in
//! `fail` returns an error, so every failure path can be driven.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use crate::proxy::{GrpcStatusCode, LogLevel, MetricType, Status};

use crate::header_map::encode;
use crate::host::{HeaderMap, Host, HostError, HostResult, Shared};

#[derive(Default)]
pub struct Process {
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    cas_seq: Cell<u32>,
    metric_names: RefCell<Vec<String>>,
    metric_values: RefCell<BTreeMap<String, i64>>,
    pub log: RefCell<Vec<(LogLevel, String)>>,
    /// Once, right after some VM reads this key: what another VM (on
    /// another thread in Envoy) does meanwhile.
    #[allow(clippy::type_complexity)]
    after_read: RefCell<Option<(String, Box<dyn FnOnce(&Process)>)>>,
}

impl Process {
    pub fn new() -> Rc<Process> {
        Rc::new(Process::default())
    }

    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().get(key).map(|(v, _)| v.clone())
    }

    pub fn shared_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.shared.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// A metric's value by its name (0 when never touched).
    pub fn metric(&self, name: &str) -> i64 {
        self.metric_values.borrow().get(name).copied().unwrap_or(0)
    }

    /// Runs `then` once, right after a VM next reads `key`.
    pub fn after_read(&self, key: &str, then: impl FnOnce(&Process) + 'static) {
        *self.after_read.borrow_mut() = Some((key.to_owned(), Box::new(then)));
    }

    /// Writes shared data as another VM would.
    pub fn write_shared(&self, key: &str, value: &[u8]) {
        let cas = self.cas_seq.get() + 1;
        self.cas_seq.set(cas);
        self.shared.borrow_mut().insert(key.to_owned(), (value.to_vec(), cas));
    }

    /// Sets a metric as another VM would.
    pub fn set_metric(&self, name: &str, value: i64) {
        self.metric_values.borrow_mut().insert(name.to_owned(), value);
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.borrow().iter().any(|(_, m)| m.contains(needle))
    }
}

/// What a VM did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    LocalReply { status: u32, headers: Vec<(String, Vec<u8>)>, body: Vec<u8> },
    GrpcReply { code: u32, message: String, metadata: Vec<(String, Vec<u8>)> },
    Reset,
    Dispatch { cluster: String, headers: Vec<(String, String)>, body: Vec<u8>, timeout: Duration, token: u32 },
}

#[derive(Default)]
pub struct VmState {
    pub config: RefCell<Vec<u8>>,
    pub now_ms: Cell<u64>,
    pub request: RefCell<Vec<(String, Vec<u8>)>>,
    /// Served by `request_headers` instead of `request` when set: a header
    /// map as bytes, which may be malformed.
    pub raw_request: RefCell<Option<Vec<u8>>>,
    pub response: RefCell<Vec<(String, Vec<u8>)>>,
    pub properties: RefCell<HashMap<String, Vec<u8>>>,
    pub calls: RefCell<Vec<Call>>,
    /// Raw header-map bytes and body of the next HTTP-call answer.
    pub call_answer: RefCell<(Vec<u8>, Vec<u8>)>,
    pub body_reads: Cell<u32>,
    /// Calls that fail, with the status each returns.
    pub fail: RefCell<HashMap<&'static str, Status>>,
    /// Property reads made (a host call each).
    pub property_reads: Cell<u32>,
    /// Shared-data reads and writes made.
    pub shared_gets: Cell<u32>,
    pub shared_sets: Cell<u32>,
    next_token: Cell<u32>,
}

#[derive(Clone)]
pub struct FakeHost {
    pub process: Rc<Process>,
    pub vm: Rc<VmState>,
}

impl FakeHost {
    pub fn new(process: &Rc<Process>, config: &str) -> FakeHost {
        let vm = VmState::default();
        *vm.config.borrow_mut() = config.as_bytes().to_vec();
        vm.now_ms.set(1_000_000);
        FakeHost { process: process.clone(), vm: Rc::new(vm) }
    }

    pub fn fail(&self, call: &'static str) {
        self.fail_with(call, Status::InternalFailure);
    }

    pub fn fail_with(&self, call: &'static str, status: Status) {
        self.vm.fail.borrow_mut().insert(call, status);
    }

    pub fn heal(&self, call: &'static str) {
        self.vm.fail.borrow_mut().remove(call);
    }

    pub fn set_request<N: AsRef<str>, V: AsRef<[u8]>>(&self, headers: &[(N, V)]) {
        *self.vm.request.borrow_mut() =
            headers.iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_vec())).collect();
        self.vm.response.borrow_mut().clear();
        self.vm.calls.borrow_mut().clear();
    }

    /// Every value of a request header, in order.
    pub fn request_header(&self, name: &str) -> Vec<Vec<u8>> {
        self.vm.request.borrow().iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    pub fn response_header(&self, name: &str) -> Vec<Vec<u8>> {
        self.vm.response.borrow().iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.vm.calls.borrow().clone()
    }

    pub fn dispatches(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| matches!(c, Call::Dispatch { .. })).collect()
    }

    /// Sets the answer the next `on_http_call_response` reads.
    pub fn answer<N: AsRef<[u8]>, V: AsRef<[u8]>>(&self, headers: &[(N, V)], body: &[u8]) {
        *self.vm.call_answer.borrow_mut() = (encode(headers), body.to_vec());
    }

    pub fn advance(&self, ms: u64) {
        self.vm.now_ms.set(self.vm.now_ms.get() + ms);
    }

    fn check(&self, call: &'static str) -> HostResult<()> {
        match self.vm.fail.borrow().get(call) {
            Some(&status) => Err(HostError { call, status }),
            None => Ok(()),
        }
    }
}

/// A value as Envoy hands it over: an empty one is a null pointer, which
/// the ABI layer reads as no value.
fn present(value: &[u8]) -> Option<Vec<u8>> {
    (!value.is_empty()).then(|| value.to_vec())
}

fn owned(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
}

impl Host for FakeHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.process.log.borrow_mut().push((level, message.to_owned()));
    }

    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
        self.check("plugin_configuration")?;
        let config = self.vm.config.borrow().clone();
        Ok((!config.is_empty()).then_some(config))
    }

    fn now_ms(&self) -> HostResult<u64> {
        self.check("now_ms")?;
        Ok(self.vm.now_ms.get())
    }

    fn set_tick_period(&self, _period: Duration) -> HostResult<()> {
        self.check("set_tick_period")
    }

    fn request_headers(&self) -> HostResult<HeaderMap> {
        self.check("request_headers")?;
        if let Some(raw) = &*self.vm.raw_request.borrow() {
            return Ok(HeaderMap::from_bytes(raw.clone()));
        }
        Ok(HeaderMap::from_bytes(encode(&self.vm.request.borrow())))
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        self.check("set_request_header")?;
        let mut request = self.vm.request.borrow_mut();
        request.retain(|(k, _)| k != name);
        request.push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        self.check("add_request_header")?;
        self.vm.request.borrow_mut().push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> HostResult<()> {
        self.check("remove_request_header")?;
        self.vm.request.borrow_mut().retain(|(k, _)| k != name);
        Ok(())
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        self.check("add_response_header")?;
        self.vm.response.borrow_mut().push((name.to_owned(), value.to_vec()));
        Ok(())
    }

    fn remove_response_header(&self, name: &str) -> HostResult<()> {
        self.check("remove_response_header")?;
        self.vm.response.borrow_mut().retain(|(k, _)| k != name);
        Ok(())
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> HostResult<()> {
        self.check("send_local_reply")?;
        let call = Call::LocalReply { status, headers: owned(headers), body: body.to_vec() };
        self.vm.calls.borrow_mut().push(call);
        Ok(())
    }

    fn send_grpc_reply(&self, code: GrpcStatusCode, message: &str, metadata: &[(&str, &[u8])]) -> HostResult<()> {
        self.check("send_grpc_reply")?;
        let call = Call::GrpcReply { code: code as u32, message: message.to_owned(), metadata: owned(metadata) };
        self.vm.calls.borrow_mut().push(call);
        Ok(())
    }

    fn reset_request(&self) -> HostResult<()> {
        self.check("reset_request")?;
        self.vm.calls.borrow_mut().push(Call::Reset);
        Ok(())
    }

    fn define_metric(&self, _kind: MetricType, name: &str) -> HostResult<u32> {
        self.check("define_metric")?;
        let mut names = self.process.metric_names.borrow_mut();
        let id = match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_owned());
                names.len() - 1
            }
        };
        Ok(id as u32)
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        self.check("increment_metric")?;
        let name = self.process.metric_names.borrow()[id as usize].clone();
        *self.process.metric_values.borrow_mut().entry(name).or_default() += by;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        self.check("record_metric")?;
        let name = self.process.metric_names.borrow()[id as usize].clone();
        self.process.metric_values.borrow_mut().insert(name, value as i64);
        Ok(())
    }

    fn shared_get(&self, key: &str) -> HostResult<Shared> {
        self.check("shared_get")?;
        self.vm.shared_gets.set(self.vm.shared_gets.get() + 1);
        let read = match self.process.shared.borrow().get(key) {
            Some((v, cas)) => (present(v), Some(*cas)),
            None => (None, None),
        };
        let then = self.process.after_read.borrow_mut().take_if(|(k, _)| k == key);
        if let Some((_, then)) = then {
            then(&self.process);
        }
        Ok(read)
    }

    /// Envoy's semantics: a CAS on a missing key is ignored.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        self.check("shared_set")?;
        self.vm.shared_sets.set(self.vm.shared_sets.get() + 1);
        let mut shared = self.process.shared.borrow_mut();
        if let (Some(cas), Some((_, current))) = (cas, shared.get(key)) {
            if cas != *current {
                return Err(HostError { call: "set_shared_data", status: Status::CasMismatch });
            }
        }
        let next = self.process.cas_seq.get() + 1;
        self.process.cas_seq.set(next);
        shared.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        self.check("property")?;
        self.vm.property_reads.set(self.vm.property_reads.get() + 1);
        Ok(self.vm.properties.borrow().get(&path.join(".")).and_then(|v| present(v)))
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32> {
        self.check("dispatch_http_call")?;
        let token = self.vm.next_token.get() + 1;
        self.vm.next_token.set(token);
        let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), String::from_utf8_lossy(v).into_owned())).collect();
        self.vm.calls.borrow_mut().push(Call::Dispatch {
            cluster: cluster.to_owned(),
            headers,
            body: body.to_vec(),
            timeout,
            token,
        });
        Ok(token)
    }

    fn http_call_response_headers(&self) -> HostResult<HeaderMap> {
        self.check("http_call_response_headers")?;
        Ok(HeaderMap::from_bytes(self.vm.call_answer.borrow().0.clone()))
    }

    fn http_call_response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        self.check("http_call_response_body")?;
        self.vm.body_reads.set(self.vm.body_reads.get() + 1);
        let body = &self.vm.call_answer.borrow().1;
        Ok(present(&body[..size.min(body.len())]))
    }
}
