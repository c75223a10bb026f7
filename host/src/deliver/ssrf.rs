//! The egress guard: every outbound connection a tenant can point somewhere
//! goes through it. Webhook destinations that resolve to loopback, private,
//! link-local, CGNAT, multicast, documentation, translation (NAT64, 6to4,
//! Teredo) or cloud-metadata addresses — every not globally reachable block
//! of the IANA special-purpose registries — are refused unless the operator
//! allows them (all, or CIDRs); brokers of `nats` sources are refused unless
//! the operator allows them by name or network ([`BrokerPolicy`]), and the
//! cluster's own NATS never is. The check happens inside
//! the HTTP client's resolver, so the connection goes to exactly the
//! addresses that were checked: a DNS answer that changes between check and
//! connect (rebinding) cannot slip past. Through the operator's egress
//! proxy the proxy connects, not this client: [`Guard::check_name`]
//! checks every address the destination has first, and the proxy's own
//! lookup is a second one a rebinding name could answer differently (see
//! SECURITY.md: the proxy must refuse private destinations too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An IP network such as `10.1.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 one,
        // as the addresses it is compared with are.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => v4_in(ip, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => v6_in(ip, net, self.prefix),
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why an address is not a public destination, or None if it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// Single addresses of cloud metadata services, checked before the ranges
/// so that the reason names them.
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Every block of the IANA IPv4 Special-Purpose Address Registry that is
/// not globally reachable, with the private-use and multicast blocks of
/// RFC 1918 and RFC 5771. A few blocks of the registry are marked
/// globally reachable (AS112 at 192.31.196.0/24 and 192.175.48.0/24, AMT
/// at 192.52.193.0/24): those are ordinary destinations. The 192.0.0.0/24
/// block is refused whole, its two anycast addresses included: nobody
/// sends webhooks there.
const V4_SPECIAL: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "CGNAT (100.64.0.0/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking (198.18.0.0/15)",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "reserved"),
];

/// Every block of the IANA IPv6 Special-Purpose Address Registry that is
/// not globally reachable, with unique-local, link-local, the deprecated
/// site-local and multicast, most specific first. `::ffff:0:0/96`
/// (IPv4-mapped) never gets here: it is judged as its IPv4 address. Blocks
/// that embed or reach an IPv4 address (IPv4-compatible, IPv4-translated,
/// NAT64, 6to4, Teredo) are refused whole, since the IPv4 address inside
/// may be a private one. Inside 2001::/23 the registry marks a few small
/// blocks globally reachable (2001:1::1/128, 2001:3::/32, …); they are
/// refused with the rest, and an operator who needs one allows it.
const V6_SPECIAL: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, "IPv4-compatible"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated",
    ),
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, "NAT64"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "NAT64"),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy prefix",
    ),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignment",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4"),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing (SRv6) SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "private (unique local)",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (deprecated)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    if METADATA_V4.contains(&ip) {
        return Some("cloud metadata");
    }
    V4_SPECIAL
        .iter()
        .find(|(net, prefix, _)| v4_in(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip == METADATA_V6 {
        return Some("cloud metadata");
    }
    V6_SPECIAL
        .iter()
        .find(|(net, prefix, _)| v6_in(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

/// How long [`Guard::check_name`] waits for the resolver.
const NAME_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `localhost` and the names under it are loopback by definition (RFC
/// 6761 §6.3): answered here, never asked of a resolver, so no DNS server
/// (or a resolver that does not answer) decides what they are.
fn loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The addresses of `host:port`: the system resolver's, except for the
/// loopback names ([`loopback_name`]).
async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if loopback_name(host) {
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

/// The operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Allow every destination (tests, trusted networks).
    pub allow_private: bool,
    /// Networks allowed although not public.
    pub allow: Vec<Cidr>,
}

/// A destination the guard refused; the message names the address and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "destination {host} resolves to {ip}, a {why} address; refused by the SSRF guard (allow it with --allow-private-destinations or an allowlist CIDR)"
)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

impl Guard {
    /// Resolves `host` and checks every address it has: for a destination
    /// reached through the egress proxy, which resolves it again itself,
    /// so one refused address refuses the destination.
    pub async fn check_name(&self, host: &str, port: u16) -> Result<(), String> {
        self.resolve_checked(host, port).await.map(drop)
    }

    /// The addresses of `host:port`, each checked (one refused address
    /// refuses the name): what a broker destination connects to.
    pub async fn resolve_checked(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check(host, ip).map_err(|e| e.to_string())?;
            return Ok(vec![SocketAddr::new(canonical(ip), port)]);
        }
        let resolved: Vec<SocketAddr> =
            tokio::time::timeout(NAME_CHECK_TIMEOUT, lookup(host, port))
                .await
                .map_err(|_| format!("dns: {host}: no answer within {NAME_CHECK_TIMEOUT:?}"))?
                .map_err(|e| format!("dns: {host}: {e}"))?
                .into_iter()
                .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
                .collect();
        if resolved.is_empty() {
            return Err(format!("dns: {host} did not resolve to any address"));
        }
        for addr in &resolved {
            self.check(host, addr.ip()).map_err(|e| e.to_string())?;
        }
        Ok(resolved)
    }

    /// The addresses of `host:port`, unchecked (the cluster's own NATS,
    /// to refuse them); none when it does not resolve.
    pub async fn resolve_any(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        resolve(host, port).await
    }

    /// Checks one resolved address for `host`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.allow_private || self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match non_public_reason(ip) {
            None => Ok(()),
            Some(why) => Err(Refused {
                host: host.to_string(),
                ip,
                why,
            }),
        }
    }
}

/// reqwest's resolver with the guard inside: resolves with the system
/// resolver and passes on only the addresses the guard accepts.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
    /// The operator's egress proxy: its name resolves unchecked (it is
    /// the one private address deliveries are meant to reach; the
    /// destinations behind it are checked before it is asked).
    pub proxy_host: Option<String>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let exempt = self
            .proxy_host
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(name.as_str()));
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved = lookup(&host, 0).await?;
            if exempt {
                return Ok(Box::new(resolved.into_iter()) as Addrs);
            }
            let mut allowed = Vec::new();
            let mut refused = None;
            for addr in resolved {
                match guard.check(&host, addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(e) => refused = Some(e),
                }
            }
            if allowed.is_empty() {
                return Err(match refused {
                    Some(e) => Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
                    None => format!("{host} did not resolve to any address").into(),
                });
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// One entry of `sources.nats_allow`: a broker by `host:port` (a
/// `nats://` or `tls://` URL, or the bare `host:port`), or a network whose
/// addresses brokers may have (`10.20.0.0/16`, `203.0.113.7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAllow {
    Network(Cidr),
    HostPort { host: String, port: u16 },
}

impl FromStr for BrokerAllow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(cidr) = s.parse::<Cidr>() {
            return Ok(BrokerAllow::Network(cidr));
        }
        let url = if s.contains("://") {
            s.to_string()
        } else {
            format!("nats://{s}")
        };
        let (host, port) = broker_host_port(&url).map_err(|_| {
            format!("{s:?} is neither a broker (nats://host:4222) nor a network (10.0.0.0/8)")
        })?;
        Ok(BrokerAllow::HostPort { host, port })
    }
}

/// The host (lower case, IPv6 without brackets) and port (4222 when
/// absent) of a `nats://` or `tls://` URL.
pub fn broker_host_port(url: &str) -> Result<(String, u16), BrokerRefused> {
    let bad = || BrokerRefused::BadUrl;
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "nats" | "tls") {
        return Err(bad());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(bad)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Ok((host, parsed.port().unwrap_or(4222)))
}

/// Where `nats` sources may connect: the egress guard for brokers. A
/// tenant names the broker, so without an operator's allow-list no broker
/// is reachable, and this cluster's own NATS never is (its log carries
/// every tenant's records).
#[derive(Debug, Clone, Default)]
pub struct BrokerPolicy {
    /// `sources.nats_allow`.
    pub allow: Vec<BrokerAllow>,
    /// The cluster's own NATS URLs (cluster mode).
    pub internal: Vec<String>,
}

/// A broker the policy refused. The message never says whether anything
/// listens at the address: the check happens before any connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerRefused {
    #[error("nats.url is nats://host:port or tls://host:port")]
    BadUrl,
    #[error(
        "nats sources are off: the operator allows brokers in sources.nats_allow (WASMHOOK_SOURCES_NATS_ALLOW)"
    )]
    Off,
    #[error("the broker {host}:{port} is not one the operator allows (sources.nats_allow)")]
    NotAllowed { host: String, port: u16 },
    #[error("the broker {host}:{port} is this cluster's own NATS; a source reads another broker")]
    Internal { host: String, port: u16 },
    #[error("the broker host {host} does not resolve")]
    Unresolved { host: String },
}

/// What to connect to for a source: the URL with the host replaced by the
/// checked address (`nats://`; a `tls://` URL keeps its host name, which
/// the server's certificate must match), and a name for logs and errors
/// without the URL's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTarget {
    pub connect_url: String,
    pub display: String,
}

impl BrokerPolicy {
    /// Checks `url` against the policy: every address its host resolves
    /// to must be allowed and none may be the cluster's own NATS.
    pub async fn check(&self, url: &str) -> Result<BrokerTarget, BrokerRefused> {
        let (host, port) = broker_host_port(url)?;
        if self.allow.is_empty() {
            return Err(BrokerRefused::Off);
        }
        let resolved = resolve(&host, port).await;
        if resolved.is_empty() {
            return Err(BrokerRefused::Unresolved { host });
        }
        let mut internal = Vec::new();
        for own in &self.internal {
            if let Ok((h, p)) = broker_host_port(own) {
                if h == host && p == port {
                    return Err(BrokerRefused::Internal { host, port });
                }
                internal.extend(resolve(&h, p).await);
            }
        }
        if resolved.iter().any(|a| internal.contains(a)) {
            return Err(BrokerRefused::Internal { host, port });
        }
        let named = self.allow.iter().any(
            |a| matches!(a, BrokerAllow::HostPort { host: h, port: p } if *h == host && *p == port),
        );
        let allowed = |addr: &SocketAddr| {
            named
                || self
                    .allow
                    .iter()
                    .any(|a| matches!(a, BrokerAllow::Network(c) if c.contains(addr.ip())))
        };
        if !resolved.iter().all(allowed) {
            return Err(BrokerRefused::NotAllowed { host, port });
        }
        let mut parsed = reqwest::Url::parse(url).map_err(|_| BrokerRefused::BadUrl)?;
        let display = format!("{}://{}", parsed.scheme(), format_host_port(&host, port));
        if parsed.scheme() == "nats" {
            // Connect to the address checked, not to a name that may
            // resolve elsewhere by the time the client looks it up.
            let ip = resolved[0].ip().to_string();
            parsed
                .set_host(Some(&match resolved[0] {
                    SocketAddr::V6(_) => format!("[{ip}]"),
                    SocketAddr::V4(_) => ip,
                }))
                .map_err(|_| BrokerRefused::BadUrl)?;
            parsed
                .set_port(Some(port))
                .map_err(|_| BrokerRefused::BadUrl)?;
        }
        Ok(BrokerTarget {
            connect_url: parsed.to_string(),
            display,
        })
    }
}

/// `host:port`, an IPv6 host in brackets.
pub fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The addresses of `host:port` (an IP literal is itself).
async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(canonical(ip), port)];
    }
    match tokio::time::timeout(NAME_CHECK_TIMEOUT, lookup(host, port)).await {
        Ok(Ok(addrs)) => addrs
            .into_iter()
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses() {
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "CGNAT (100.64.0.0/10)"),
            ("100.127.255.255", "CGNAT (100.64.0.0/10)"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a00:1", "NAT64"),
            // The forms that once slipped through.
            ("::127.0.0.1", "IPv4-compatible"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("::ffff:0:10.0.0.1", "IPv4-translated"),
            ("::ffff:0:127.0.0.1", "IPv4-translated"),
            ("2002:7f00:1::", "6to4"),
            ("2002:a00:1::1", "6to4"),
            ("fec0::1", "site-local (deprecated)"),
            ("2001::1", "Teredo"),
            ("2001:db8::1", "documentation"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("192.0.2.1", "documentation (TEST-NET-1)"),
            ("198.51.100.7", "documentation (TEST-NET-2)"),
            ("203.0.113.9", "documentation (TEST-NET-3)"),
            ("192.88.99.1", "6to4 relay anycast"),
        ] {
            assert_eq!(non_public_reason(ip(addr)), Some(why), "{addr}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "192.31.196.1",
            "192.52.193.1",
            "192.175.48.1",
            "2001:200::1",
            "2003::1",
        ] {
            assert_eq!(non_public_reason(ip(public)), None, "{public}");
        }
    }

    /// Every block of both tables is refused from its first address to its
    /// last, and the address just past each end is either public or
    /// another block's.
    #[test]
    fn every_special_purpose_block_is_refused_end_to_end() {
        for (net, prefix, why) in V4_SPECIAL {
            let mask = u32::MAX.checked_shl(32 - *prefix as u32).unwrap_or(0);
            let first = u32::from(*net) & mask;
            let last = first | !mask;
            for a in [first, last] {
                let a = IpAddr::V4(Ipv4Addr::from(a));
                assert!(non_public_reason(a).is_some(), "{a} ({why})");
            }
            for outside in [first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                let a = IpAddr::V4(Ipv4Addr::from(outside));
                let covered = V4_SPECIAL
                    .iter()
                    .any(|(n, p, _)| v4_in(Ipv4Addr::from(outside), *n, *p));
                assert_eq!(
                    non_public_reason(a).is_some(),
                    covered,
                    "{a} next to {net}/{prefix}"
                );
            }
        }
        for (net, prefix, why) in V6_SPECIAL {
            let mask = u128::MAX.checked_shl(128 - *prefix as u32).unwrap_or(0);
            let first = u128::from(*net) & mask;
            let last = first | !mask;
            for a in [first, last] {
                let v6 = Ipv6Addr::from(a);
                // IPv4-mapped addresses are judged as IPv4 (and public ones pass).
                if v6.to_ipv4_mapped().is_some() {
                    continue;
                }
                assert!(non_public_reason(IpAddr::V6(v6)).is_some(), "{v6} ({why})");
            }
            for outside in [first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                let v6 = Ipv6Addr::from(outside);
                if v6.to_ipv4_mapped().is_some() {
                    continue;
                }
                let covered = V6_SPECIAL.iter().any(|(n, p, _)| v6_in(v6, *n, *p));
                assert_eq!(
                    non_public_reason(IpAddr::V6(v6)).is_some(),
                    covered,
                    "{v6} next to {net}/{prefix}"
                );
            }
        }
    }

    #[tokio::test]
    async fn brokers_are_refused_unless_allowed_and_never_the_clusters_own() {
        let off = BrokerPolicy::default();
        assert_eq!(
            off.check("nats://8.8.8.8:4222").await,
            Err(BrokerRefused::Off)
        );
        let policy = BrokerPolicy {
            allow: vec![
                "nats://broker.example:4222".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            internal: vec!["nats://127.0.0.1:4222".into()],
        };
        assert_eq!(
            policy.check("nats://localhost:4222").await,
            Err(BrokerRefused::Internal {
                host: "localhost".into(),
                port: 4222
            }),
            "the cluster's own NATS, by another name"
        );
        assert!(matches!(
            policy.check("nats://127.0.0.1").await,
            Err(BrokerRefused::Internal { .. })
        ));
        let ok = policy.check("nats://user:pw@127.0.0.1:5222").await.unwrap();
        assert_eq!(ok.connect_url, "nats://user:pw@127.0.0.1:5222");
        assert_eq!(ok.display, "nats://127.0.0.1:5222", "no credentials");
        assert_eq!(
            policy.check("nats://10.0.0.1:4222").await,
            Err(BrokerRefused::NotAllowed {
                host: "10.0.0.1".into(),
                port: 4222
            })
        );
        for bad in [
            "http://127.0.0.1:4222",
            "nats://",
            "not a url",
            "nats://:4222",
        ] {
            assert_eq!(policy.check(bad).await, Err(BrokerRefused::BadUrl), "{bad}");
        }
        assert!(matches!(
            "10.0.0.0/8".parse::<BrokerAllow>(),
            Ok(BrokerAllow::Network(_))
        ));
        assert_eq!(
            "Broker.Example".parse::<BrokerAllow>(),
            Ok(BrokerAllow::HostPort {
                host: "broker.example".into(),
                port: 4222
            })
        );
        assert!("nats://".parse::<BrokerAllow>().is_err());
    }

    #[test]
    fn guard_exceptions() {
        let strict = Guard::default();
        assert!(strict.check("h", ip("127.0.0.1")).is_err());
        assert!(strict.check("h", ip("8.8.8.8")).is_ok());
        let open = Guard {
            allow_private: true,
            allow: vec![],
        };
        assert!(open.check("h", ip("169.254.169.254")).is_ok());
        let listed = Guard {
            allow_private: false,
            allow: vec!["10.1.0.0/16".parse().unwrap(), "fd12::/16".parse().unwrap()],
        };
        assert!(listed.check("h", ip("10.1.200.3")).is_ok());
        assert!(listed.check("h", ip("10.2.0.1")).is_err());
        assert!(listed.check("h", ip("fd12::5")).is_ok());
        let e = strict.check("db.internal", ip("10.0.0.5")).unwrap_err();
        assert!(
            e.to_string()
                .contains("db.internal resolves to 10.0.0.5, a private address")
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("10.0.0.1".parse::<Cidr>().unwrap().contains(ip("10.0.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("::ffff:10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let resolver = GuardedResolver {
            proxy_host: None,
            guard: Arc::new(Guard::default()),
        };
        let err = match resolver.resolve(Name::from_str("localhost").unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[tokio::test]
    async fn localhost_names_are_loopback_without_a_resolver() {
        let guard = Guard::default();
        for name in ["localhost", "LocalHost.", "db.localhost", "a.b.localhost."] {
            let err = guard.resolve_checked(name, 6379).await.unwrap_err();
            assert!(err.contains("loopback"), "{name}: {err}");
        }
        let open = Guard {
            allow_private: true,
            ..Guard::default()
        };
        assert_eq!(
            open.resolve_checked("localhost", 6379).await.unwrap(),
            vec![
                "127.0.0.1:6379".parse::<SocketAddr>().unwrap(),
                "[::1]:6379".parse().unwrap()
            ]
        );
        for other in ["localhost.example", "notlocalhost", "localhostx"] {
            assert!(!loopback_name(other), "{other}");
        }
    }
}
