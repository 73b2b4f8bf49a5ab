//! The proxy-wasm ABI 0.2.1 as the filter uses it: the enums of the host
//! interface and the three context traits. An own thin layer instead of the
//! proxy-wasm SDK (about 30 KB of the wasm: its dispatcher links every
//! hostcall and context kind, used or not); the exports and imports are in
//! `proxy_abi` (wasm32 only), so native tests run the same contexts against
//! the fake host.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

/// Log levels, as the host numbers them.
#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// What a stream callback tells the host.
#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// A host call's result, as the host's code: every code keeps its own
/// identity (a caller tells `CasMismatch` from `NotFound` from
/// `Unimplemented`), including one this filter has no name for.
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub struct Status(u32);

/// The ABI's names, by code.
const STATUS_NAMES: [&str; 13] = [
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

// The ABI's names, as the enum variants they were.
#[allow(non_upper_case_globals)]
impl Status {
    pub const Ok: Status = Status(0);
    pub const NotFound: Status = Status(1);
    pub const BadArgument: Status = Status(2);
    pub const Empty: Status = Status(7);
    pub const CasMismatch: Status = Status(8);
    pub const InternalFailure: Status = Status(10);
    pub const Unimplemented: Status = Status(12);
}

impl Status {
    pub fn from_raw(code: u32) -> Status {
        Status(code)
    }

    /// The ABI's name, for messages (no `Debug` formatting in the wasm);
    /// `None` for a code the ABI does not define.
    pub fn name(self) -> Option<&'static str> {
        STATUS_NAMES.get(self.0 as usize).copied()
    }
}

impl isogroup_core::text::Piece for Status {
    fn push_to(&self, out: &mut String) {
        match self.name() {
            Some(name) => out.push_str(name),
            None => isogroup_core::cat_to!(out; "status ", self.0),
        }
    }
}

#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum ContextType {
    HttpContext = 0,
    StreamContext = 1,
}

#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// The gRPC status codes the filter answers with.
#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum GrpcStatusCode {
    Ok = 0,
    Unavailable = 14,
}

/// Callbacks every context gets.
pub trait Context {
    /// An answer to an HTTP call this context dispatched.
    fn on_http_call_response(&mut self, _token_id: u32, _headers: usize, _body_size: usize, _trailers: usize) {}
}

/// The plugin's root context: configuration, ticks, and a factory of
/// per-request contexts.
pub trait RootContext: Context {
    fn on_configure(&mut self, _size: usize) -> bool {
        true
    }
    fn on_tick(&mut self) {}
    fn get_type(&self) -> Option<ContextType> {
        None
    }
    /// `&mut`: a root may bring its table up to date before the stream starts.
    fn create_http_context(&mut self, _context_id: u32) -> Option<Box<dyn HttpContext>>;
}

/// One HTTP stream's callbacks.
pub trait HttpContext: Context {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
