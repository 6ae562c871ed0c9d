//! The egress guard: where the forward proxy may connect. Destinations are the providers'
//! hosts plus the operator's allow list (default deny); every address a destination resolves
//! to must be public unless the operator allowed its range, and a cloud metadata address
//! only when it is named exactly.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::uri::{Authority, Scheme};

use super::Refusal;
use crate::providers::Providers;

/// Addresses cloud platforms serve instance credentials on: allowed only by an entry that
/// names the address itself, never by a wider range.
const METADATA: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// A `[forward]` setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An `allow` entry is not `host`, `host:port` or `*.domain[:port]`.
    #[error("forward.allow: `{0}` is not a host, host:port or *.domain[:port]")]
    Destination(String),
    /// An `allow_addresses` entry is not an address or CIDR range.
    #[error("forward.allow_addresses: `{0}` is not an IP address or CIDR range (10.0.0.0/8)")]
    Range(String),
}

/// A host and port an agent asked to reach: a CONNECT target or an absolute URL's authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Lowercase host name, or an IP address without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Destination {
    /// The destination of `authority`, whose port defaults to `default_port` when absent
    /// (`None`: the port is required, as in CONNECT).
    pub fn new(authority: &Authority, default_port: Option<u16>) -> Result<Self, Refusal> {
        let bad = || Refusal::BadTarget(authority.to_string());
        if authority.as_str().contains('@') {
            return Err(bad());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        // `host:99999` has a port, just not one `port_u16` can read: not the default.
        let after_host = authority
            .as_str()
            .rsplit_once(']')
            .map_or(authority.as_str(), |(_, p)| p);
        if after_host.contains(':') && authority.port_u16().is_none() {
            return Err(bad());
        }
        let port = authority.port_u16().or(default_port).ok_or_else(bad)?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Destination { host, port })
    }

    /// The destination's address, when its host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host[:port]` as it goes in a URL, the port left out when it is `scheme`'s default.
    pub fn authority(&self, scheme: &Scheme) -> String {
        let host = match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        if self.port == default_port(scheme) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Whether `host` (a Host header or SNI, any case, maybe with a port) names this
    /// destination; a missing port means `scheme`'s default.
    pub fn is_named_by(&self, host: &str, scheme: &Scheme) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        Destination::new(&authority, Some(default_port(scheme))).is_ok_and(|d| d == *self)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The default port of `http` (80) and `https` (443).
pub fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTP { 80 } else { 443 }
}

/// Which destinations the forward proxy may reach: every provider's hosts and the allow list.
#[derive(Debug, Default)]
pub struct Destinations {
    exact: HashSet<Destination>,
    /// `*.domain` entries: the suffix (with its leading dot) and the port.
    suffixes: Vec<(String, u16)>,
}

impl Destinations {
    /// The providers' base-URL and extra hosts, and the `allow` entries (`host`,
    /// `host:port`, `*.domain[:port]`; the port defaults to 443).
    pub fn new(providers: &Providers, allow: &[String]) -> Result<Self, EgressError> {
        let mut out = Destinations::default();
        for name in providers.names() {
            let Some(provider) = providers.get(name) else {
                continue;
            };
            for (scheme, authority) in provider.hosts() {
                if let Ok(dest) = Destination::new(&authority, Some(default_port(&scheme))) {
                    out.exact.insert(dest);
                }
            }
        }
        for entry in allow {
            let bad = || EgressError::Destination(entry.clone());
            if let Some(rest) = entry.strip_prefix("*.") {
                let authority: Authority = rest.parse().map_err(|_| bad())?;
                let dest = Destination::new(&authority, Some(443)).map_err(|_| bad())?;
                // `*.com` would open a whole top-level domain.
                if dest.ip().is_some() || !dest.host.contains('.') {
                    return Err(bad());
                }
                out.suffixes.push((format!(".{}", dest.host), dest.port));
            } else {
                let authority: Authority = entry.parse().map_err(|_| bad())?;
                out.exact
                    .insert(Destination::new(&authority, Some(443)).map_err(|_| bad())?);
            }
        }
        Ok(out)
    }

    /// Whether agents may reach `dest`.
    pub fn allows(&self, dest: &Destination) -> bool {
        self.exact.contains(dest)
            || self
                .suffixes
                .iter()
                .any(|(suffix, port)| *port == dest.port && dest.host.ends_with(suffix.as_str()))
    }
}

/// An address range: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    net: IpAddr,
    prefix: u8,
}

impl Range {
    fn parse(text: &str) -> Option<Range> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Range { net: addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn is_single(&self) -> bool {
        self.prefix == if self.net.is_ipv4() { 32 } else { 128 }
    }
}

/// Which addresses the forward proxy may dial: public ones, and non-public ones in a range
/// the operator allowed (`allow_addresses`).
#[derive(Debug, Default)]
pub struct AddressGuard {
    allowed: Vec<Range>,
}

impl AddressGuard {
    /// A guard that also allows these ranges (`10.0.0.0/8`, `127.0.0.1`, `::1/128`).
    pub fn new(allow_addresses: &[String]) -> Result<Self, EgressError> {
        let allowed = allow_addresses
            .iter()
            .map(|text| Range::parse(text).ok_or_else(|| EgressError::Range(text.clone())))
            .collect::<Result<_, _>>()?;
        Ok(AddressGuard { allowed })
    }

    /// Whether `ip` may be dialled.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        // Through a translator or a relay, an address that embeds a metadata address reaches
        // it, however wide a range the operator allowed.
        let reaches = |v4: Ipv4Addr| METADATA.contains(&IpAddr::V4(v4));
        if METADATA.contains(&ip) || embedded_v4(ip).is_some_and(reaches) {
            return self.allowed.iter().any(|r| r.is_single() && r.contains(ip));
        }
        is_public(ip) || self.allowed.iter().any(|r| r.contains(ip))
    }

    /// The addresses of `host` that may be dialled; none is a refusal.
    pub fn filter(&self, host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|addr| self.allows(addr.ip()))
            .collect();
        if allowed.is_empty() {
            Err(Refusal::Address(host.to_owned()))
        } else {
            Ok(allowed)
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address: not private, loopback, link-local,
/// shared (CGNAT), documentation, benchmarking, multicast, reserved or unspecified, nor an
/// IPv6 form that embeds such an IPv4 address.
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(IpAddr::V6(v6)) {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                // IANA's special-purpose block (Teredo, benchmarking, ORCHID…): no API's host.
                || (s[0] == 0x2001 && s[1] < 0x0200)
                // Documentation (3fff::/20) and SRv6 segment identifiers (5f00::/16).
                || (s[0] & 0xfff0) == 0x3ff0
                || s[0] == 0x5f00
                // Local-use NAT64 (64:ff9b:1::/48) reaches whatever IPv4 address it embeds.
                || s[..3] == [0x64, 0xff9b, 1]
                || s[..4] == [0x100, 0, 0, 0]
                || s[..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

/// The IPv4 address an IPv6 one reaches through NAT64's well-known prefix (the low 32 bits)
/// or a 6to4 relay (bits 16..48).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        let guard = AddressGuard::default();
        for public in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(guard.allows(ip(public)), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001:2::1",
            "2001:20::1",
            "3fff::1",
            "5f00::1",
            "ff02::1",
        ] {
            assert!(!guard.allows(ip(private)), "{private}");
        }
    }

    #[test]
    fn local_use_nat64_addresses_are_not_public() {
        // RFC 8215's local-use prefix translates to whatever IPv4 address it embeds, cloud
        // metadata included, and is never globally reachable.
        let guard = AddressGuard::default();
        for local in ["64:ff9b:1::a9:fe00:a9fe:0", "64:ff9b:1:a9fe:a9:fe00::"] {
            assert!(!guard.allows(ip(local)), "{local}");
        }
        assert!(
            guard.allows(ip("64:ff9b::808:808")),
            "the well-known prefix to 8.8.8.8"
        );
    }

    #[test]
    fn allowed_ranges_open_private_addresses_but_metadata_needs_its_own_entry() {
        let guard =
            AddressGuard::new(&["127.0.0.1".into(), "10.0.0.0/8".into(), "0.0.0.0/0".into()])
                .unwrap();
        assert!(guard.allows(ip("127.0.0.1")));
        assert!(guard.allows(ip("10.9.8.7")));
        assert!(
            guard.allows(ip("169.254.1.1")),
            "0.0.0.0/0 allows link-local"
        );
        assert!(!guard.allows(ip("169.254.169.254")), "but not metadata");
        let wide = AddressGuard::new(&["::/0".into()]).unwrap();
        for metadata in [
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "64:ff9b::6464:64c8",
        ] {
            assert!(
                !wide.allows(ip(metadata)),
                "{metadata}: metadata through ::/0"
            );
        }
        assert!(wide.allows(ip("fd00::1")), "::/0 allows unique-local");
        assert!(!guard.allows(ip("::1")), "IPv4 ranges don't cover IPv6");
        let metadata = AddressGuard::new(&["169.254.169.254/32".into()]).unwrap();
        assert!(metadata.allows(ip("169.254.169.254")));
        assert!(AddressGuard::new(&["10.0.0.0/33".into()]).is_err());
        assert!(AddressGuard::new(&["example.com".into()]).is_err());
        let found = vec![
            "10.0.0.1:443".parse().unwrap(),
            "1.1.1.1:443".parse().unwrap(),
        ];
        assert_eq!(
            AddressGuard::default().filter("x", found).unwrap(),
            vec!["1.1.1.1:443".parse::<SocketAddr>().unwrap()]
        );
        assert!(matches!(
            AddressGuard::default().filter("x", vec!["10.0.0.1:443".parse().unwrap()]),
            Err(Refusal::Address(_))
        ));
    }

    fn dest(text: &str) -> Destination {
        Destination::new(&text.parse().unwrap(), Some(443)).unwrap()
    }

    #[test]
    fn destinations_are_provider_hosts_and_the_allow_list() {
        let providers = Providers::load(&BTreeMap::new()).unwrap();
        let allow = [
            "pypi.org".to_owned(),
            "*.example.com:8443".to_owned(),
            "10.0.0.1:80".to_owned(),
        ];
        let d = Destinations::new(&providers, &allow).unwrap();
        assert!(d.allows(&dest("api.openai.com:443")));
        assert!(d.allows(&dest("API.OpenAI.com")));
        assert!(d.allows(&dest("github.com:443")), "github's extra host");
        assert!(!d.allows(&dest("api.openai.com:80")));
        assert!(!d.allows(&dest("evil.example:443")));
        assert!(d.allows(&dest("pypi.org")));
        assert!(d.allows(&dest("a.b.example.com:8443")));
        assert!(!d.allows(&dest("example.com:8443")));
        assert!(!d.allows(&dest("a.example.com:443")));
        assert!(!d.allows(&dest("evilexample.com:8443")));
        assert!(d.allows(&dest("10.0.0.1:80")));
        for bad in ["a b", "*.", "https://x", "x:99999"] {
            assert!(
                Destinations::new(&providers, &[bad.to_owned()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_name_a_destination_in_any_case_with_or_without_the_default_port() {
        let d = dest("api.openai.com:443");
        assert!(d.is_named_by("api.openai.com", &Scheme::HTTPS));
        assert!(d.is_named_by("API.OPENAI.COM:443", &Scheme::HTTPS));
        assert!(!d.is_named_by("api.openai.com:8443", &Scheme::HTTPS));
        assert!(!d.is_named_by("api.openai.com", &Scheme::HTTP));
        assert!(!d.is_named_by("evil.example", &Scheme::HTTPS));
        assert!(!d.is_named_by("user@api.openai.com", &Scheme::HTTPS));
        assert_eq!(d.authority(&Scheme::HTTPS), "api.openai.com");
        let v6 = dest("[::1]:8443");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(&Scheme::HTTPS), "[::1]:8443");
        assert_eq!(v6.to_string(), "[::1]:8443");
        assert!(Destination::new(&"example.com".parse().unwrap(), None).is_err());
    }
}
