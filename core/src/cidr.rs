//! CIDR ranges (`10.1.0.0/16`, `2001:db8::/32`) and peer addresses as
//! Envoy reports them (`127.0.0.1:50562`, `[::1]:8080`).

#[allow(unused_imports)]
use crate::prelude::*;

use core::net::IpAddr;

use crate::ip::parse_ip;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/len`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, &'static str> {
        let (addr, prefix) = match crate::text::split_once_ascii(text, b'/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net = parse_ip(crate::text::trim(addr)).ok_or("not an IP address")?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => crate::text::parse_u64(crate::text::trim(p).as_bytes())
                .and_then(|p| u8::try_from(p).ok())
                .ok_or("prefix length is not a number")?,
            None => max,
        };
        if prefix > max {
            return Err("prefix length too long for the address family");
        }
        // `contains` sees an IPv4-mapped peer as its IPv4 address, so a range
        // written in mapped form (`::ffff:10.0.0.0/104`) is that IPv4 range.
        if let IpAddr::V6(v6) = net {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr { net: IpAddr::V4(v4), prefix: prefix - 96 });
            }
        }
        Ok(Cidr { net, prefix })
    }

    /// A range as a binding names it: like `parse`, and the address has no
    /// bits set past the prefix (`192.0.2.7/24` is refused: `192.0.2.0/24`).
    pub fn parse_network(text: &str) -> Result<Cidr, &'static str> {
        let c = Cidr::parse(text)?;
        let (bits, width) = match c.net {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (u128::from(a), 128u32),
        };
        let prefix = u32::from(c.prefix);
        let host = if prefix >= width { 0 } else { bits & (u128::MAX >> (128 - width + prefix)) };
        if host != 0 {
            return Err("host bits set past the prefix length");
        }
        Ok(c)
    }

    pub fn network(&self) -> IpAddr {
        self.net
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u128::from(u32::from(n)) << 96, u128::from(u32::from(a)) << 96, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0
}

/// The IP of an Envoy `source.address` value: `ip:port`, `[v6]:port`, or a
/// bare address.
pub fn peer_ip(address: &[u8]) -> Option<IpAddr> {
    let text = crate::text::trim(core::str::from_utf8(address).ok()?);
    if let Some(ip) = parse_ip(text) {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return parse_ip(crate::text::split_once_ascii(rest, b']').map_or(rest, |(ip, _)| ip));
    }
    parse_ip(crate::text::rsplit_once_ascii(text, b':')?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.1.0.0/16", "10.1.2.3", true),
            ("10.1.0.0/16", "10.2.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("192.0.2.0/24", "::ffff:192.0.2.7", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "::1", true),
            ("10.0.0.0/8", "::1", false),
            // a range in IPv4-mapped form holds the peer in either form
            ("::ffff:10.0.0.0/104", "10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "11.0.0.1", false),
            ("::ffff:192.0.2.7", "192.0.2.7", true),
        ];
        for (cidr, ip, want) in cases {
            let c = Cidr::parse(cidr).unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), *want, "{cidr} {ip}");
        }
        assert_eq!(Cidr::parse("10.0.0.0/33"), Err("prefix length too long for the address family"));
        assert_eq!(Cidr::parse("10.0.0/8"), Err("not an IP address"));
        assert_eq!(Cidr::parse("10.0.0.0/x"), Err("prefix length is not a number"));
        let networks: &[(&str, bool)] = &[
            ("192.0.2.0/24", true),
            ("192.0.2.7/24", false),
            ("192.0.2.7/32", true),
            ("192.0.2.7", true),
            ("0.0.0.0/0", true),
            ("1.0.0.0/0", false),
            ("10.128.0.0/9", true),
            ("10.192.0.0/9", false),
            ("2001:db8::/32", true),
            ("2001:db8::1/64", false),
            ("::1/128", true),
            ("::ffff:10.0.0.0/104", true),
            ("::ffff:10.0.0.1/104", false),
        ];
        for (text, ok) in networks {
            assert_eq!(Cidr::parse_network(text).is_ok(), *ok, "{text}");
        }
        assert_eq!(Cidr::parse_network("10.0.0.1/8"), Err("host bits set past the prefix length"));
    }

    #[test]
    fn peers() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"127.0.0.1:50562", Some("127.0.0.1")),
            (b"[::1]:8080", Some("::1")),
            (b"10.0.0.1", Some("10.0.0.1")),
            (b"::1", Some("::1")),
            (b"garbage", None),
            (b"\xff", None),
        ];
        for (addr, want) in cases {
            assert_eq!(peer_ip(addr), want.map(|w| w.parse().unwrap()), "{:?}", String::from_utf8_lossy(addr));
        }
    }
}
