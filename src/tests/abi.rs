//! `proxy_abi` (the only `unsafe`) natively, over the Envoy double: what the
//! host hands over comes back as Envoy means it (a null pointer is no
//! value), what the filter sends arrives as Envoy reads it, and the exports
//! drive the same contexts the wasm build runs.

use crate::host::{Host, HostError};
use crate::proxy::Status;
use crate::proxy_abi::{self as abi, BufferType, MapType};

use crate::wasm_host::WasmHost;

use super::envoy::with;
use super::inline_config;

const REQUEST: u32 = MapType::HttpRequestHeaders as u32;
const RESPONSE: u32 = MapType::HttpResponseHeaders as u32;

fn request(pairs: &[(&str, &str)]) {
    let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
    with(|e| e.maps.insert(REQUEST, pairs));
}

fn request_header(name: &str) -> Vec<String> {
    with(|e| {
        let pairs = e.maps.get(&REQUEST).cloned().unwrap_or_default();
        pairs.into_iter().filter(|(k, _)| k == name).map(|(_, v)| String::from_utf8(v).unwrap()).collect()
    })
}

#[test]
fn buffers_come_back_as_the_host_hands_them_over() {
    let config = BufferType::PluginConfiguration;
    assert_eq!(abi::get_buffer(config, usize::MAX), Ok(None), "no buffer: NotFound");
    with(|e| e.buffers.insert(config as u32, Vec::new()));
    assert_eq!(abi::get_buffer(config, usize::MAX), Ok(None), "an empty one: Ok and a null pointer");
    with(|e| e.buffers.insert(config as u32, b"{}".to_vec()));
    assert_eq!(abi::get_buffer(config, usize::MAX), Ok(Some(b"{}".to_vec())));
    with(|e| e.buffers.insert(BufferType::HttpCallResponseBody as u32, b"abcdef".to_vec()));
    assert_eq!(abi::get_buffer(BufferType::HttpCallResponseBody, 3), Ok(Some(b"abc".to_vec())));
    // A large one, in memory the module allocated and now owns.
    let large: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    with(|e| e.buffers.insert(config as u32, large.clone()));
    assert_eq!(abi::get_buffer(config, usize::MAX), Ok(Some(large)));
    with(|e| e.fail.insert("get_buffer_bytes", 12));
    assert_eq!(abi::get_buffer(config, usize::MAX), Err(Status::Unimplemented));
}

#[test]
fn shared_data_keeps_cas_and_missing_apart() {
    assert_eq!(abi::get_shared_data("k"), Ok((None, None)), "a missing key");
    abi::set_shared_data("k", b"v1", None).unwrap();
    let (value, cas) = abi::get_shared_data("k").unwrap();
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));
    let cas = cas.expect("a CAS");
    abi::set_shared_data("k", b"v2", Some(cas)).unwrap();
    assert_eq!(abi::set_shared_data("k", b"v3", Some(cas)), Err(Status::CasMismatch), "someone wrote in between");
    abi::set_shared_data("k", b"", None).unwrap();
    let (value, cas) = abi::get_shared_data("k").unwrap();
    assert_eq!((value, cas.is_some()), (None, true), "an empty value: a null pointer, the key still there");
}

#[test]
fn header_maps_and_pairs_round_trip_with_hostile_bytes() {
    let sent = [(":authority", "a"), ("x-isogroup", "\u{7f}\u{0}"), ("empty", "")];
    request(&sent);
    let map = crate::header_map::HeaderMap::from_bytes(abi::header_map_pairs(MapType::HttpRequestHeaders).unwrap());
    let got: Vec<(&str, &[u8])> = map.pairs();
    let want: Vec<(&str, &[u8])> = sent.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    assert_eq!(got, want);
    with(|e| e.maps.insert(RESPONSE, Vec::new()));
    assert_eq!(abi::header_map_pairs(MapType::HttpResponseHeaders), Ok(Vec::new()), "an empty map");
    assert_eq!(abi::header_map_pairs(MapType::HttpCallResponseHeaders), Err(Status::NotFound));
    abi::replace_header(MapType::HttpRequestHeaders, "x-isogroup", b"feature-1").unwrap();
    abi::add_header(MapType::HttpRequestHeaders, "baggage", b"a=1").unwrap();
    abi::remove_header(MapType::HttpRequestHeaders, "empty").unwrap();
    assert_eq!(request_header("x-isogroup"), ["feature-1"]);
    assert_eq!(request_header("baggage"), ["a=1"]);
    assert!(request_header("empty").is_empty());
    abi::send_local_response(503, &[("x-isogroup-failfast", b"b"), ("content-type", b"application/json")], b"{}")
        .unwrap();
    abi::send_grpc_response(crate::proxy::GrpcStatusCode::Unavailable, "down", &[("x-isogroup-failfast", b"b")])
        .unwrap();
    let replies = with(|e| e.replies.clone());
    let failfast = ("x-isogroup-failfast".to_owned(), b"b".to_vec());
    assert_eq!(replies[0].0, 503);
    assert_eq!(replies[0].1, b"{}");
    assert_eq!(replies[0].2, [failfast.clone(), ("content-type".to_owned(), b"application/json".to_vec())]);
    assert_eq!(replies[0].3, -1, "not gRPC");
    assert_eq!((replies[1].1.as_slice(), replies[1].2.as_slice(), replies[1].3), (&b"down"[..], &[failfast][..], 14));
}

#[test]
fn properties_are_looked_up_by_their_nul_joined_path_and_statuses_stay_distinct() {
    with(|e| e.properties.insert(b"source\0address".to_vec(), b"10.0.0.1:5000".to_vec()));
    assert_eq!(abi::get_property(&["source", "address"]), Ok(Some(b"10.0.0.1:5000".to_vec())));
    assert_eq!(abi::get_property(&["source", "port"]), Ok(None), "NotFound");
    with(|e| e.fail.insert("get_property", 12));
    let e = WasmHost.property(&["source", "address"]).unwrap_err();
    assert_eq!(e, HostError { call: "get_property", status: Status::Unimplemented });
    assert_eq!(e.to_string(), "get_property failed: Unimplemented");
}

/// The fake host the other unit tests run on answers as the ABI layer does
/// over an Envoy-like host: an empty value is no value.
#[test]
fn the_fake_host_answers_as_the_abi_does() {
    use crate::fake_host::{FakeHost, Process};
    let fake = FakeHost::new(&Process::new(), "");
    for host in [&fake as &dyn Probe, &WasmHost] {
        host.seed();
    }
    assert_eq!(fake.shared_get("empty").map(|(v, c)| (v, c.is_some())), Ok((None, true)), "shared data");
    assert_eq!(WasmHost.shared_get("empty").map(|(v, c)| (v, c.is_some())), Ok((None, true)));
    assert_eq!(fake.property(&["empty"]), WasmHost.property(&["empty"]));
    assert_eq!(fake.property(&["empty"]), Ok(None), "an empty property");
    assert_eq!(fake.http_call_response_body(0), WasmHost.http_call_response_body(0));
    assert_eq!(fake.http_call_response_body(0), Ok(None), "an empty body");
    assert_eq!(fake.plugin_configuration(), WasmHost.plugin_configuration());
}

/// Puts the same empty values in either host.
trait Probe {
    fn seed(&self);
}

impl Probe for crate::fake_host::FakeHost {
    fn seed(&self) {
        self.shared_set("empty", b"", None).unwrap();
        self.vm.properties.borrow_mut().insert("empty".to_owned(), Vec::new());
        self.answer::<&str, &str>(&[], b"");
    }
}

impl Probe for WasmHost {
    fn seed(&self) {
        self.shared_set("empty", b"", None).unwrap();
        with(|e| {
            e.properties.insert(b"empty".to_vec(), Vec::new());
            e.buffers.insert(BufferType::HttpCallResponseBody as u32, Vec::new());
            e.buffers.insert(BufferType::PluginConfiguration as u32, Vec::new());
        });
    }
}

#[test]
fn a_request_through_the_exports() {
    let config = inline_config("");
    with(|e| e.buffers.insert(BufferType::PluginConfiguration as u32, config.clone().into_bytes()));
    abi::proxy_on_context_create(1, 0);
    assert!(abi::proxy_on_configure(1, config.len()), "{:?}", with(|e| e.log.clone()));
    assert!(with(|e| e.log.iter().any(|(_, m)| m.contains("configured vm"))));
    request(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("x-isogroup-cluster", "a-team-s")]);
    abi::proxy_on_context_create(2, 1);
    assert_eq!(abi::proxy_on_request_headers(2, 3, true), 0, "Continue");
    assert_eq!(request_header("x-isogroup-cluster"), ["a-feature-1"]);
    assert_eq!(request_header("x-isogroup-target"), ["feature-1"]);
    with(|e| e.maps.insert(RESPONSE, Vec::new()));
    assert_eq!(abi::proxy_on_response_headers(2, 0, true), 0);
    let served = with(|e| e.maps[&RESPONSE].clone());
    assert_eq!(served, [("x-isogroup-served".to_owned(), b"a=feature-1".to_vec())]);
    abi::proxy_on_delete(2);
    // A fail-fast answers locally: Pause, and nothing goes upstream.
    request(&[(":authority", "b"), ("x-isogroup", "team-s")]);
    abi::proxy_on_context_create(3, 1);
    assert_eq!(abi::proxy_on_request_headers(3, 2, true), 1, "Pause");
    assert_eq!(with(|e| e.replies.len()), 1);
    abi::proxy_on_delete(3);
    abi::proxy_on_delete(1);
}

#[test]
fn an_unknown_stream_is_sanitised_through_the_abi() {
    // No plugin configured: the stream has no context (its root never was).
    abi::proxy_on_context_create(1, 0);
    abi::proxy_on_context_create(2, 1);
    let sent = [(":authority", "a"), ("x-isogroup-cluster", "a-team-s"), ("x-isogroup-target", "team-s")];
    request(&sent);
    assert_eq!(abi::proxy_on_request_headers(2, 3, true), 0, "Continue");
    assert!(request_header("x-isogroup-cluster").is_empty(), "a client's routing header never passes");
    assert!(request_header("x-isogroup-target").is_empty());
    assert_eq!(request_header(":authority"), ["a"]);
    // A context id never created, and a remove that fails: the stream is closed.
    request(&sent);
    with(|e| e.fail.insert("remove_header_map_value", 10));
    assert_eq!(abi::proxy_on_request_headers(99, 3, true), 1, "Pause");
    assert_eq!(with(|e| e.closed.clone()), [0], "the request stream is closed");
}
