//! The host part of an `:authority`, normalised the way table hosts are:
//! port stripped (IPv6 `[…]:port` too), one trailing dot removed, lower-cased.

#[allow(unused_imports)]
use crate::prelude::*;

/// Longest DNS name; anything longer is not a service of ours.
pub const MAX_HOST_LEN: usize = 253;

/// Normalises `authority` into `buf` and returns the host, without touching
/// the heap. `None` for an empty, over-long or non-ASCII host.
pub fn normalize<'b>(authority: &'b [u8], buf: &'b mut [u8; MAX_HOST_LEN + 1]) -> Option<&'b str> {
    let (host, upper) = host_part(authority)?;
    if !upper {
        return core::str::from_utf8(host).ok();
    }
    let out = buf.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    core::str::from_utf8(out).ok()
}

/// Calls `f` with the normalised host (printable ASCII). The copy, and its
/// buffer, happen only for a host with upper-case letters, which the request
/// path rarely sees.
pub fn with_host<R>(authority: &[u8], f: impl FnOnce(&[u8]) -> Option<R>) -> Option<R> {
    let (host, upper) = host_part(authority)?;
    if !upper {
        return f(host);
    }
    let mut buf = [0u8; MAX_HOST_LEN + 1];
    let out = buf.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    f(out)
}

/// The host without port and trailing dot, if it is one we could serve, and
/// whether it has upper-case letters. One pass over the bytes.
fn host_part(authority: &[u8]) -> Option<(&[u8], bool)> {
    let a = authority.trim_ascii();
    let mut first_colon = None;
    let mut colons = 0;
    let mut upper = false;
    for (i, &b) in a.iter().enumerate() {
        if !b.is_ascii_graphic() {
            return None;
        }
        if b == b':' {
            colons += 1;
            first_colon.get_or_insert(i);
        }
        upper |= b.is_ascii_uppercase();
    }
    let host = match (a.first(), first_colon) {
        // `[v6]` or `[v6]:port`
        (Some(b'['), _) => {
            let end = a.iter().position(|&b| b == b']')?;
            a.get(1..end)?
        }
        // `host:port`; several colons and no brackets: a bare IPv6 address
        (_, Some(c)) if colons == 1 => a.get(..c)?,
        _ => a,
    };
    let host = match host {
        [host @ .., b'.'] => host,
        _ => host,
    };
    (!host.is_empty() && host.len() <= MAX_HOST_LEN).then_some((host, upper))
}

/// The port of an `:authority` (`host:port`, `[v6]:port`); `None` without
/// one, or for a bare IPv6 address.
pub fn port(authority: &[u8]) -> Option<u16> {
    let a = authority.trim_ascii();
    let (host, digits) = crate::text::rsplit_byte(a, b':')?;
    let bracketed = host.first() == Some(&b'[') && host.last() == Some(&b']');
    if !bracketed && crate::text::has_byte(host, b':') {
        return None;
    }
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| Some(n * 10 + u32::from(d - b'0'))).and_then(|n| u16::try_from(n).ok())
}

/// The same normalisation for a configured host (owned, for the table index).
pub fn normalize_owned(host: &str) -> Option<String> {
    let mut buf = [0u8; MAX_HOST_LEN + 1];
    normalize(host.as_bytes(), &mut buf).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (&[b'a'; 253], Some(core::str::from_utf8(&[b'a'; 253]).unwrap())),
        ];
        for (auth, want) in cases {
            let mut buf = [0u8; MAX_HOST_LEN + 1];
            assert_eq!(normalize(auth, &mut buf), *want, "{:?}", String::from_utf8_lossy(auth));
        }
    }

    #[test]
    fn ports() {
        let cases: &[(&str, Option<u16>)] = &[
            ("reviews:9080", Some(9080)),
            ("reviews", None),
            ("reviews:", None),
            ("reviews:65535", Some(65535)),
            ("reviews:65536", None),
            ("reviews:080", Some(80)),
            ("reviews:-1", None),
            ("reviews:9a", None),
            ("reviews:123456", None),
            ("[::1]:8080", Some(8080)),
            ("[::1]", None),
            ("fe80::1", None),
            ("127.0.0.1:443", Some(443)),
            (" reviews:9443 ", Some(9443)),
        ];
        for (auth, want) in cases {
            assert_eq!(port(auth.as_bytes()), *want, "{auth}");
        }
    }
}
