//! SSRF protection: which addresses a webhook may be delivered to. Loopback, private, link-local, CGNAT,
//! multicast, unspecified, IPv4-mapped/translated IPv6, IPv6 site-local, Teredo, discard-only and
//! cloud-metadata addresses are refused unless an allow-list (`WEBHOOKD_ALLOWED_NETWORKS`) opens them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An address a webhook may not reach, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {} {class} address, which webhooks may not reach (allow it with WEBHOOKD_ALLOWED_NETWORKS)", article(class))]
pub struct Refused {
    /// The address.
    pub ip: IpAddr,
    /// Its class, e.g. "private".
    pub class: &'static str,
}

fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'I') => "an",
        _ => "a",
    }
}

/// The refusal rules plus the allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
    disabled: bool,
}

/// A CIDR list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR network such as 127.0.0.0/8 or ::1/128")]
pub struct BadNetwork(pub String);

impl NetworkPolicy {
    /// Refuses every reserved address except those in `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed,
            disabled: false,
        }
    }

    /// Allows everything (SSRF protection off).
    pub fn allow_all() -> Self {
        Self {
            allowed: Vec::new(),
            disabled: true,
        }
    }

    /// Parses a comma-separated CIDR list.
    pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, BadNetwork> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadNetwork(s.to_owned()))
            })
            .collect()
    }

    /// Whether a webhook may be delivered to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.disabled || self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match classify(ip) {
            Some(class) => Err(Refused { ip, class }),
            None => Ok(()),
        }
    }
}

/// The reserved class of `ip`, if it has one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud-metadata")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("CGNAT (shared)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
        Some("benchmarking")
    } else if (o[0], o[1], o[2]) == (192, 0, 0)
        || (o[0], o[1], o[2]) == (192, 0, 2)
        || (o[0], o[1], o[2]) == (198, 51, 100)
        || (o[0], o[1], o[2]) == (203, 0, 113)
    {
        Some("documentation or protocol-assignment")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped IPv6")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        Some("IPv4-translated IPv6 (NAT64)")
    } else if seg[0] == 0x2002 {
        Some("6to4")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        // Deprecated (RFC 3879), but still routed inside some networks.
        Some("site-local")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo (RFC 4380) embeds an IPv4 server and client address, which could be an internal one.
        Some("Teredo")
    } else if seg[..4] == [0x100, 0, 0, 0] {
        Some("discard-only")
    } else if seg[0] & 0xff00 == 0xff00 {
        Some("multicast")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("documentation")
    } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible IPv6")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_reserved_class_is_refused() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("169.254.169.254", "cloud-metadata"),
            ("100.64.0.1", "CGNAT (shared)"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped IPv6"),
            ("::ffff:8.8.8.8", "IPv4-mapped IPv6"),
            ("fd12::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b::a00:1", "IPv4-translated IPv6 (NAT64)"),
            ("fd00:ec2::254", "private (unique local)"), // AWS's IPv6 metadata address
            ("fec0::1", "site-local"),
            ("feff:ffff::1", "site-local"),
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("100::1", "discard-only"),
            ("100::ffff:ffff:ffff:ffff", "discard-only"),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "2001:1::1",    // just past Teredo's /32
            "2001:4860::1", // public
            "100:0:0:1::1", // just past discard-only's /64
        ] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_opens_exceptions() {
        let policy = NetworkPolicy::new(NetworkPolicy::parse_networks("127.0.0.0/8, ::1").unwrap());
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::1".parse().unwrap()).is_ok());
        let refused = policy.check("10.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "10.0.0.1 is a private address, which webhooks may not reach (allow it with WEBHOOKD_ALLOWED_NETWORKS)"
        );
        assert!(NetworkPolicy::parse_networks("10.0.0.0/33").is_err());
        assert!(NetworkPolicy::allow_all()
            .check("10.0.0.1".parse().unwrap())
            .is_ok());
    }
}
