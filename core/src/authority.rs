//! The host part of an `:authority`, normalised the way table hosts are:
//! port stripped (IPv6 `[…]:port` too), one trailing dot removed, lower-cased.

/// Longest DNS name; anything longer is not a service of ours.
pub const MAX_HOST_LEN: usize = 253;

/// Normalises `authority` into `buf` and returns the host, without touching
/// the heap. `None` for an empty, over-long or non-ASCII host.
pub fn normalize<'b>(authority: &[u8], buf: &'b mut [u8; MAX_HOST_LEN + 1]) -> Option<&'b str> {
    let host = strip_port(authority.trim_ascii());
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

fn strip_port(authority: &[u8]) -> &[u8] {
    if let Some(rest) = authority.strip_prefix(b"[") {
        // `[v6]` or `[v6]:port`
        return match rest.iter().position(|&b| b == b']') {
            Some(end) => &rest[..end],
            None => authority,
        };
    }
    let colons = authority.iter().filter(|&&b| b == b':').count();
    match colons {
        1 => authority.split(|&b| b == b':').next().unwrap_or(authority),
        // A bare IPv6 address has several colons and no port.
        _ => authority,
    }
}

/// The same normalisation for a configured host (owned, for the table index).
pub fn normalize_owned(host: &str) -> Option<String> {
    let mut buf = [0u8; MAX_HOST_LEN + 1];
    normalize(host.as_bytes(), &mut buf).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn authorities() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"reviews", Some("reviews")),
            (b"reviews:9080", Some("reviews")),
            (b"Reviews.Default.SVC.cluster.local.", Some("reviews.default.svc.cluster.local")),
            (b"reviews.:80", Some("reviews")),
            (b"[::1]:8080", Some("::1")),
            (b"[fe80::1]", Some("fe80::1")),
            (b"fe80::1", Some("fe80::1")),
            (b"127.0.0.1:80", Some("127.0.0.1")),
            (b" reviews ", Some("reviews")),
            (b"", None),
            (b":80", None),
            (b".", None),
            (b"re views", None),
            (b"r\xc3\xa9views", None),
            (&[b'a'; 254], None),
            (&[b'a'; 253], Some(std::str::from_utf8(&[b'a'; 253]).unwrap())),
        ];
        for (auth, want) in cases {
            let mut buf = [0u8; MAX_HOST_LEN + 1];
            assert_eq!(normalize(auth, &mut buf), *want, "{:?}", String::from_utf8_lossy(auth));
        }
    }
}
