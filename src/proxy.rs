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

/// A host call's result; a code this filter does not know reads as
/// `InternalFailure`.
#[repr(u32)]
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

impl Status {
    pub fn from_raw(code: u32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            _ => Status::InternalFailure,
        }
    }

    /// The name, for messages (no `Debug` formatting in the wasm).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::NotFound => "NotFound",
            Status::BadArgument => "BadArgument",
            Status::SerializationFailure => "SerializationFailure",
            Status::ParseFailure => "ParseFailure",
            Status::Empty => "Empty",
            Status::CasMismatch => "CasMismatch",
            Status::InternalFailure => "InternalFailure",
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
