//! Server discovery (spec: server-server API, "Resolving server names") and the address filter.
//!
//! ```text
//!  server name
//!   |- IP literal [:port]            -> that IP, port or 8448; Host = the server name
//!   |- hostname:port                 -> A/AAAA of hostname; Host = hostname:port
//!   '- hostname  -> GET https://hostname/.well-known/matrix/server (cached)
//!        |- m.server = delegated     -> delegated IP literal [:port] | delegated:port |
//!        |                              SRV _matrix-fed._tcp.delegated | delegated:8448
//!        |                              (Host and TLS name = delegated)
//!        '- none                     -> SRV _matrix-fed._tcp.hostname | hostname:8448
//! ```
//!
//! Every address we connect to passes the [`IpFilter`] (deny private ranges unless allowed), so
//! a hostile server name cannot make the node call internal services: IP literals are checked
//! here, resolved names in [`FilteringResolver`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;

/// How long a found `.well-known` answer is kept when the response says nothing.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest a `.well-known` answer is kept, whatever the response says.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long "this server has no .well-known" is kept.
const WELL_KNOWN_ABSENT_TTL: Duration = Duration::from_secs(3600);
/// First retry delay after a failed `.well-known` fetch; doubles up to [`WELL_KNOWN_ABSENT_TTL`].
const WELL_KNOWN_FIRST_BACKOFF: Duration = Duration::from_secs(120);

/// Where a request for a server name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host for the URL and the TLS name (SNI, certificate): a hostname or an IP literal
    /// (IPv6 in brackets).
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// The `Host` header.
    pub host_header: String,
    /// A name to resolve instead of `host` (an SRV target); `None`: resolve `host`.
    pub connect_name: Option<String>,
}

impl Target {
    /// `https://host:port`.
    pub fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// Why a server name could not be turned into a target.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Not a valid server name.
    #[error("invalid server name {0:?}")]
    InvalidName(String),
    /// The address is in a denied range.
    #[error("{0} is in a denied IP range")]
    Denied(IpAddr),
}

/// The answers discovery needs from the network (a trait so the decision logic is testable).
pub trait Lookup: Send + Sync + 'static {
    /// The `m.server` of `https://<host>/.well-known/matrix/server`: `Ok(None)` when there is
    /// none (404, not JSON, no `m.server`), `Err` on a network failure; with the time to keep it.
    fn well_known(
        &self,
        host: &str,
    ) -> impl Future<Output = Result<(Option<String>, Option<Duration>), String>> + Send;
    /// The first `_matrix-fed._tcp.<name>` SRV record (lowest priority): target and port.
    fn srv(&self, name: &str) -> impl Future<Output = Option<(String, u16)>> + Send;
}

/// A name split into host and optional port.
fn split_host_port(name: &str) -> Result<(String, Option<u16>), DiscoveryError> {
    let invalid = || DiscoveryError::InvalidName(name.to_owned());
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(invalid());
    }
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(invalid)?,
            ),
        };
        return Ok((format!("[{ip}]"), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().map_err(|_| invalid())?;
            if host.is_empty() || host.contains(':') {
                return Err(invalid());
            }
            Ok((host.to_owned(), Some(port)))
        }
        None => Ok((name.to_owned(), None)),
    }
}

/// The IP of an IP-literal host (`1.2.3.4`, `[::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
        .filter(|_| host.starts_with('[') || !host.contains(':'))
}

/// Which addresses outgoing federation may connect to.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// `allow` wins over `deny`; an address in neither is allowed.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> IpFilter {
        IpFilter { allow, deny }
    }

    /// Whether connecting to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip)) || !self.deny.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone)]
struct WellKnownEntry {
    server: Option<String>,
    until: Instant,
    /// After a failure: the delay before the next try.
    backoff: Option<Duration>,
}

/// Discovery with a `.well-known` cache.
#[derive(Debug)]
pub struct Discovery<L> {
    lookup: L,
    filter: IpFilter,
    well_known: Mutex<HashMap<String, WellKnownEntry>>,
}

impl<L: Lookup> Discovery<L> {
    /// Discovery over `lookup`, refusing IP literals outside `filter`.
    pub fn new(lookup: L, filter: IpFilter) -> Discovery<L> {
        Discovery {
            lookup,
            filter,
            well_known: Mutex::new(HashMap::new()),
        }
    }

    /// The address filter.
    pub fn filter(&self) -> &IpFilter {
        &self.filter
    }

    fn literal_target(
        &self,
        host: String,
        port: Option<u16>,
        host_header: String,
    ) -> Result<Target, DiscoveryError> {
        if let Some(ip) = ip_literal(&host)
            && !self.filter.allows(ip)
        {
            return Err(DiscoveryError::Denied(ip));
        }
        Ok(Target {
            host,
            port: port.unwrap_or(DEFAULT_PORT),
            host_header,
            connect_name: None,
        })
    }

    /// Where requests for `server_name` go.
    pub async fn resolve(&self, server_name: &str) -> Result<Target, DiscoveryError> {
        let (host, port) = split_host_port(server_name)?;
        // 1. IP literal, 2. explicit port: no delegation.
        if ip_literal(&host).is_some() || port.is_some() {
            return self.literal_target(host, port, server_name.to_owned());
        }
        // 3. .well-known delegation.
        if let Some(delegated) = self.well_known(&host).await {
            let (d_host, d_port) = split_host_port(&delegated)?;
            if ip_literal(&d_host).is_some() || d_port.is_some() {
                return self.literal_target(d_host, d_port, delegated);
            }
            if let Some(target) = self.srv_target(&d_host).await {
                return Ok(target);
            }
            return self.literal_target(d_host.clone(), None, d_host);
        }
        // 4. SRV of the server name, 5. port 8448.
        if let Some(target) = self.srv_target(&host).await {
            return Ok(target);
        }
        self.literal_target(host.clone(), None, host)
    }

    async fn srv_target(&self, host: &str) -> Option<Target> {
        let (target, port) = self.lookup.srv(&format!("_matrix-fed._tcp.{host}")).await?;
        let target = target.trim_end_matches('.').to_owned();
        Some(Target {
            host: host.to_owned(),
            port,
            host_header: host.to_owned(),
            connect_name: (target != host).then_some(target),
        })
    }

    /// The cached or fetched delegation of `host`.
    async fn well_known(&self, host: &str) -> Option<String> {
        let now = Instant::now();
        let previous = {
            let cache = self.well_known.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(host).cloned()
        };
        if let Some(entry) = &previous
            && entry.until > now
        {
            return entry.server.clone();
        }
        let entry = match self.lookup.well_known(host).await {
            Ok((server, ttl)) => WellKnownEntry {
                until: now
                    + match (&server, ttl) {
                        (None, _) => WELL_KNOWN_ABSENT_TTL,
                        (Some(_), Some(ttl)) => ttl.min(WELL_KNOWN_MAX_TTL),
                        (Some(_), None) => WELL_KNOWN_DEFAULT_TTL,
                    },
                server,
                backoff: None,
            },
            Err(err) => {
                // Keep what we knew; try again later, less often each time.
                let backoff = previous
                    .as_ref()
                    .and_then(|p| p.backoff)
                    .map_or(WELL_KNOWN_FIRST_BACKOFF, |b| {
                        (b * 2).min(WELL_KNOWN_ABSENT_TTL)
                    });
                tracing::debug!(host, error = %err, ?backoff, ".well-known/matrix/server failed");
                WellKnownEntry {
                    server: previous.and_then(|p| p.server),
                    until: now + backoff,
                    backoff: Some(backoff),
                }
            }
        };
        let server = entry.server.clone();
        let mut cache = self.well_known.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.retain(|_, e| e.until > now);
        }
        cache.insert(host.to_owned(), entry);
        server
    }
}

/// The DNS resolver the federation HTTP client uses: hickory, SRV targets in place of the URL's
/// host where discovery found one, and only addresses the [`IpFilter`] allows.
#[derive(Clone)]
pub struct FilteringResolver {
    dns: Arc<hickory_resolver::TokioResolver>,
    filter: IpFilter,
    /// URL host -> name to resolve instead (SRV targets).
    aliases: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for FilteringResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilteringResolver").finish_non_exhaustive()
    }
}

impl FilteringResolver {
    /// A resolver with the system's DNS configuration (`/etc/resolv.conf`).
    pub fn new(filter: IpFilter) -> Result<FilteringResolver, String> {
        let builder = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(err) => {
                // No /etc/resolv.conf (a minimal container): names that need DNS will fail,
                // IP literals and SRV-less names with addresses still work.
                tracing::warn!(error = %err, "no system DNS configuration; using resolver defaults");
                hickory_resolver::TokioResolver::builder_with_config(
                    hickory_resolver::config::ResolverConfig::default(),
                    hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
                )
            }
        };
        let dns = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(FilteringResolver {
            dns: Arc::new(dns),
            filter,
            aliases: Arc::default(),
        })
    }

    /// Resolve `target.connect_name` whenever a URL names `target.host`.
    pub fn remember(&self, target: &Target) {
        if let Some(name) = &target.connect_name {
            self.aliases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(target.host.clone(), name.clone());
        }
    }

    /// The allowed addresses of `host`.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let name = self
            .aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
            .unwrap_or_else(|| host.to_owned());
        let ips: Vec<IpAddr> = if let Some(ip) = ip_literal(&name) {
            vec![ip]
        } else if name.eq_ignore_ascii_case("localhost") {
            // Not every resolver configuration knows it; the filter still decides.
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            self.dns
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?
                .iter()
                .collect()
        };
        let allowed: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| self.filter.allows(*ip))
            .collect();
        if allowed.is_empty() {
            return Err(match ips.first() {
                Some(ip) => DiscoveryError::Denied(*ip).to_string(),
                None => format!("{name}: no address"),
            });
        }
        Ok(allowed)
    }

    /// The first SRV record of `name`, lowest priority first.
    pub async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let lookup = self.dns.srv_lookup(name).await.ok()?;
        lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => {
                    Some((srv.priority, srv.target.to_utf8(), srv.port))
                }
                _ => None,
            })
            .min_by_key(|(priority, _, _)| *priority)
            .map(|(_, target, port)| (target, port))
    }
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let ips = this.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        well_known: HashMap<String, Result<Option<String>, String>>,
        srv: HashMap<String, (String, u16)>,
        calls: Mutex<Vec<String>>,
    }

    impl Lookup for Arc<Fake> {
        async fn well_known(
            &self,
            host: &str,
        ) -> Result<(Option<String>, Option<Duration>), String> {
            self.calls.lock().unwrap().push(format!("wk {host}"));
            self.well_known
                .get(host)
                .cloned()
                .unwrap_or(Ok(None))
                .map(|s| (s, None))
        }
        async fn srv(&self, name: &str) -> Option<(String, u16)> {
            self.calls.lock().unwrap().push(format!("srv {name}"));
            self.srv.get(name).cloned()
        }
    }

    fn target(host: &str, port: u16, header: &str, connect: Option<&str>) -> Target {
        Target {
            host: host.into(),
            port,
            host_header: header.into(),
            connect_name: connect.map(Into::into),
        }
    }

    fn open() -> IpFilter {
        IpFilter::default()
    }

    #[tokio::test]
    async fn follows_the_spec_order() {
        let mut fake = Fake::default();
        fake.well_known.insert(
            "deleg.example".into(),
            Ok(Some("matrix.deleg.example".into())),
        );
        fake.well_known
            .insert("port.example".into(), Ok(Some("m.port.example:443".into())));
        fake.well_known
            .insert("ip.example".into(), Ok(Some("[2001:db8::1]".into())));
        fake.srv.insert(
            "_matrix-fed._tcp.matrix.deleg.example".into(),
            ("srv.host.example.".into(), 8443),
        );
        fake.srv.insert(
            "_matrix-fed._tcp.plain.example".into(),
            ("other.example".into(), 9000),
        );
        let fake = Arc::new(fake);
        let d = Discovery::new(fake.clone(), open());
        let cases = [
            ("1.2.3.4", target("1.2.3.4", 8448, "1.2.3.4", None)),
            ("1.2.3.4:99", target("1.2.3.4", 99, "1.2.3.4:99", None)),
            ("[::1]:5", target("[::1]", 5, "[::1]:5", None)),
            (
                "host.example:1234",
                target("host.example", 1234, "host.example:1234", None),
            ),
            (
                "deleg.example",
                target(
                    "matrix.deleg.example",
                    8443,
                    "matrix.deleg.example",
                    Some("srv.host.example"),
                ),
            ),
            (
                "port.example",
                target("m.port.example", 443, "m.port.example:443", None),
            ),
            (
                "ip.example",
                target("[2001:db8::1]", 8448, "[2001:db8::1]", None),
            ),
            (
                "plain.example",
                target(
                    "plain.example",
                    9000,
                    "plain.example",
                    Some("other.example"),
                ),
            ),
            (
                "nothing.example",
                target("nothing.example", 8448, "nothing.example", None),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(d.resolve(name).await.unwrap(), expected, "{name}");
        }
        // No well-known lookups for literals or explicit ports.
        let calls = fake.calls.lock().unwrap().clone();
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("1.2.3.4") || c.contains("host.example"))
        );
    }

    #[tokio::test]
    async fn well_known_answers_and_failures_are_cached() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("down.example".into(), Err("connection refused".into()));
        fake.well_known
            .insert("up.example".into(), Ok(Some("m.up.example:8448".into())));
        let fake = Arc::new(fake);
        let d = Discovery::new(fake.clone(), open());
        for _ in 0..3 {
            d.resolve("down.example").await.unwrap();
            d.resolve("up.example").await.unwrap();
        }
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| *c == "wk down.example").count(), 1);
        assert_eq!(calls.iter().filter(|c| *c == "wk up.example").count(), 1);
    }

    #[tokio::test]
    async fn denied_and_invalid_names_are_refused() {
        let deny: Vec<IpNet> = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let d = Discovery::new(
            Arc::new(Fake::default()),
            IpFilter::new(vec![], deny.clone()),
        );
        for name in [
            "127.0.0.1:8448",
            "10.1.2.3",
            "[::1]",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                matches!(d.resolve(name).await, Err(DiscoveryError::Denied(_))),
                "{name}"
            );
        }
        for name in ["", "a b", "host:notaport", "[::1", "x/y", "a:1:2"] {
            assert!(
                matches!(d.resolve(name).await, Err(DiscoveryError::InvalidName(_))),
                "{name}"
            );
        }
        // The allow list wins.
        let allow = vec!["127.0.0.0/8".parse().unwrap()];
        let d = Discovery::new(Arc::new(Fake::default()), IpFilter::new(allow, deny));
        assert_eq!(d.resolve("127.0.0.1:1").await.unwrap().port, 1);
    }
}
