//! The node's configuration: one [`Config`], loaded as defaults < TOML file < environment
//! (`UNITAS__SECTION__KEY`) < command-line flags.
//!
//! The doc comment of every field below is the documentation of that key: `examples/unitas.toml`
//! and the file `unitas init` writes are generated from these comments and from
//! `Config::default()` (see [`example`]); a test keeps the committed example in step.
//!
//! Loading never touches the disk beyond reading the file, so a bad config changes nothing.

pub mod example;
mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use unitas_territory::TerritoryCode;

pub use secret::Secret;

/// The server name of the territory a node hosts when no `[[territory]]` is configured.
pub const DEFAULT_SERVER_NAME: &str = "localhost:8448";
/// The code of that territory.
pub const DEFAULT_TERRITORY_CODE: &str = "local";
/// Prefix of environment overrides: `UNITAS__SERVER__LISTEN=0.0.0.0:8008`.
pub const ENV_PREFIX: &str = "UNITAS__";

/// Everything a node is configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Listeners, data directory and request limits.
    pub server: ServerConfig,
    /// The database.
    pub storage: StorageConfig,
    /// Server-server (federation) settings.
    pub federation: FederationConfig,
    /// Account registration.
    pub registration: RegistrationConfig,
    /// Rooms.
    pub rooms: RoomsConfig,
    /// Rate limiting of client requests.
    pub rate_limits: RateLimitsConfig,
    /// Uploaded media.
    pub media: MediaConfig,
    /// Presence (online, unavailable, offline).
    pub presence: PresenceConfig,
    /// Calls: TURN credentials and MatrixRTC (Element Call) transports.
    pub voip: VoipConfig,
    /// Push: notifications to the users' push gateways.
    pub push: PushConfig,
    /// The territory registry: which node serves which territory.
    pub registry: RegistryConfig,
    /// The registry's DHT (Kademlia over libp2p) among the network's nodes.
    pub dht: DhtConfig,
    /// Logging.
    pub log: LogConfig,
    /// The territories this node hosts, one `[[territory]]` table each. Each has its own server
    /// name (its users are `@name:<server_name>`) and its own signing key. Requests are routed to
    /// a territory by the host name they are addressed to. When none is listed, the node hosts one
    /// territory, code `local`, named by `server.server_name`. Environment variables cannot add
    /// territories; use the file.
    #[serde(rename = "territory")]
    pub territories: Vec<TerritoryConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ServerConfig {
    /// Server name of the default territory, used when no `[[territory]]` is listed: the part
    /// after `:` in user IDs. It can never change once users exist.
    pub server_name: String,
    /// Address of the client API listener (plain HTTP; put a TLS proxy in front for the
    /// internet).
    pub listen: SocketAddr,
    /// Address of the federation listener (always HTTPS: Matrix servers only federate over TLS).
    pub federation_listen: SocketAddr,
    /// Directory for the SQLite database, signing keys, TLS certificate and media.
    pub data_dir: PathBuf,
    /// Base URL Matrix clients use to reach the client API, published in
    /// `/.well-known/matrix/client`. Unset: `http://<listen>` (with `localhost` for an
    /// unspecified address).
    pub public_baseurl: Option<String>,
    /// PEM certificate chain for the federation listener. Unset: a self-signed certificate is
    /// generated on first start under `<data_dir>/tls/` (peers must be told to accept it).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger requests get `413 M_TOO_LARGE`.
    pub max_request_body_bytes: u64,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish, in seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            federation_listen: SocketAddr::from(([127, 0, 0, 1], 8448)),
            data_dir: PathBuf::from("./data"),
            public_baseurl: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_request_body_bytes: 8 * 1024 * 1024,
            shutdown_grace_secs: 20,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct StorageConfig {
    /// Database URL: `sqlite://<path>` (embedded, zero setup) or `postgres://user@host/db`
    /// (for scale). Unset: `sqlite://<data_dir>/unitas.db`.
    pub database: Option<String>,
    /// File holding the PostgreSQL password, so it need not appear in the URL.
    pub database_password_file: Option<PathBuf>,
    /// Largest number of pooled database connections.
    pub max_connections: u32,
    /// Seconds to wait for a database connection at start and per request.
    pub connect_timeout_secs: u64,
    /// SQLite durability: `normal` (a commit survives a crash of the node; the last commits
    /// before a power loss may be lost, never corrupting the database) or `full` (every commit
    /// is on disk before it is acknowledged; survives power loss, costs one fsync per commit).
    pub sqlite_synchronous: SqliteSynchronous,
    /// Milliseconds a SQLite connection waits for a lock before giving up.
    pub sqlite_busy_timeout_ms: u64,
    /// Seconds between SQLite WAL checkpoints that truncate the WAL file (0 disables them;
    /// SQLite's own automatic checkpoints still run).
    pub sqlite_checkpoint_interval_secs: u64,
    /// After a checkpoint, the SQLite WAL file is cut down to at most this many bytes.
    pub sqlite_wal_size_limit_bytes: u64,
    /// SQLite page cache per pooled connection, in KiB.
    pub sqlite_cache_size_kib: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            database: None,
            database_password_file: None,
            max_connections: 8,
            connect_timeout_secs: 5,
            sqlite_synchronous: SqliteSynchronous::Normal,
            sqlite_busy_timeout_ms: 5_000,
            sqlite_checkpoint_interval_secs: 60,
            sqlite_wal_size_limit_bytes: 64 * 1024 * 1024,
            sqlite_cache_size_kib: 2 * 1024,
        }
    }
}

/// SQLite's `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Durable across process crashes.
    Normal,
    /// Durable across power loss.
    Full,
}

/// `[federation]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct FederationConfig {
    /// Verify peers' TLS certificates. Turn off only on test networks of self-signed peers.
    pub verify_tls: bool,
    /// IP ranges (CIDR) this node may connect to even when they are in the deny list, e.g.
    /// `["127.0.0.0/8"]` for a test network on loopback. A comma-separated string is accepted
    /// from the environment.
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub ip_range_allowlist: Vec<ipnet::IpNet>,
    /// IP ranges (CIDR) this node never connects to, so a hostile server name cannot make it
    /// call internal addresses. Default: loopback, private, link-local and other special ranges.
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub ip_range_denylist: Vec<ipnet::IpNet>,
    /// Seconds for which the published signing keys are declared valid (`valid_until_ts`).
    pub key_validity_secs: u64,
    /// Notaries (server names) asked for a server's keys when the server itself does not
    /// answer (`/_matrix/key/v2/query`). Empty by default: keys come from their servers only.
    pub trusted_key_servers: Vec<String>,
    /// Seconds an outgoing federation request may take.
    pub request_timeout_secs: u64,
}

/// Address ranges peers and push gateways may not be at by default (loopback, private,
/// link-local and other special ranges).
const DENIED: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "0.0.0.0/8",
    "255.255.255.255/32",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
    "::/128",
];

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            verify_tls: true,
            ip_range_allowlist: Vec::new(),
            ip_range_denylist: DENIED.iter().filter_map(|r| r.parse().ok()).collect(),
            key_validity_secs: 24 * 60 * 60,
            trusted_key_servers: Vec::new(),
            request_timeout_secs: 60,
        }
    }
}

/// `[registration]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RegistrationConfig {
    /// Open registration: anyone may create an account (`m.login.dummy`).
    pub enabled: bool,
    /// Shared secret for admin registration (`/_synapse/admin/v1/register`). Prefer
    /// `shared_secret_file`; this key exists for environments that pass it as
    /// `UNITAS__REGISTRATION__SHARED_SECRET`. Never printed.
    pub shared_secret: Option<Secret>,
    /// File holding the shared secret for admin registration.
    pub shared_secret_file: Option<PathBuf>,
    /// File with registration tokens, one per line. When set, `/register` offers the
    /// `m.login.registration_token` flow: anyone holding a token may register, even with open
    /// registration off. Tokens can be used any number of times.
    pub tokens_file: Option<PathBuf>,
}

/// `[rooms]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RoomsConfig {
    /// Room version of new rooms: 10, 11 or 12 (the spec's recommendation since v1.16).
    #[serde(deserialize_with = "string_or_number")]
    pub default_version: String,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            default_version: "12".to_owned(),
        }
    }
}

/// `[rate_limits]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RateLimitsConfig {
    /// Rate-limit client requests (`429 M_LIMIT_EXCEEDED` with `retry_after_ms`) on the
    /// endpoints the spec marks as rate-limited.
    pub enabled: bool,
    /// Sustained requests per second per user (per address for anonymous requests).
    pub per_second: f64,
    /// Requests a user may make at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            enabled: true,
            per_second: 50.0,
            burst: 300,
        }
    }
}

/// `<scheme>://<host>:<port>` of a listener, `localhost` standing for an unspecified address.
fn listener_url(scheme: &str, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// `[registry]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RegistryConfig {
    /// The network's registry authority public keys, `ed25519:<id>=<key>` as `unitas registry
    /// keygen` prints them. Territory records signed by none of them are refused. A
    /// comma-separated string is accepted from the environment.
    #[serde(deserialize_with = "list_or_csv")]
    pub authorities: Vec<String>,
    /// A directory of signed records (`*.json`: territory records from `unitas registry sign`,
    /// and node records) read at start; each is checked, and the ones that fail are logged and
    /// left out. They seed the registry; the DHT (`[dht]`) carries records between nodes.
    pub records_dir: Option<PathBuf>,
    /// The federation base URL this node publishes in its node record (what other Unitas nodes
    /// call for the territories it serves). Unset: `https://<federation_listen>` (with
    /// `localhost` for an unspecified address).
    pub federation_url: Option<String>,
    /// The node's region code in its node record (`eu`). Unset: the launch region of its first
    /// territory.
    pub region: Option<String>,
}

/// `[dht]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct DhtConfig {
    /// libp2p addresses the DHT listens on (`/ip4/0.0.0.0/tcp/4001`). Empty: no DHT (a
    /// standalone node; the registry then comes from `registry.records_dir` only). The node's
    /// DHT identity is its node key (`<data_dir>/keys/node.signing.key`).
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub listen: Vec<String>,
    /// Peers to join the network through (`/ip4/192.0.2.7/tcp/4001`, optionally ending in
    /// `/p2p/<peer id>`); dialled at start and again while no peer is known.
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub bootstrap: Vec<String>,
    /// Addresses put in the node record for other nodes to dial (`/dns4/eu.example/tcp/4001`).
    /// Empty: the listen addresses (unspecified ones left out).
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub announce: Vec<String>,
    /// Seconds between the node's publications of its node record (which is its liveness: a
    /// node seen long ago is likely down) and of the territory records of the territories it
    /// serves.
    pub publish_interval_secs: u64,
    /// Seconds between lookups of every country's and region's record (also done once after
    /// joining).
    pub sweep_interval_secs: u64,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            announce: Vec::new(),
            publish_interval_secs: 300,
            sweep_interval_secs: 600,
        }
    }
}

/// `[voip]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct VoipConfig {
    /// TURN server URIs handed to clients (`turn:turn.example:3478?transport=udp`,
    /// `turns:turn.example:5349`). Empty: `/voip/turnServer` answers 404.
    pub turn_uris: Vec<String>,
    /// The TURN server's shared secret (coturn's `static-auth-secret`, `use-auth-secret`):
    /// credentials are `<expiry>:<user_id>` and base64(HMAC-SHA1(secret, username)). Never
    /// printed.
    pub turn_shared_secret: Option<Secret>,
    /// How long TURN credentials are valid, in seconds.
    pub turn_user_lifetime_secs: u64,
    /// MatrixRTC transports (foci) for Element Call, each `{ type = "livekit",
    /// livekit_service_url = "https://livekit-jwt.example" }`: published in
    /// `/.well-known/matrix/client` (`org.matrix.msc4143.rtc_foci`) and at
    /// `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports`.
    pub rtc_foci: Vec<RtcFocus>,
}

/// One MatrixRTC transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RtcFocus {
    /// Transport type (`livekit`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The LiveKit JWT service URL.
    pub livekit_service_url: String,
}

impl Default for VoipConfig {
    fn default() -> Self {
        VoipConfig {
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_user_lifetime_secs: 86_400,
            rtc_foci: Vec::new(),
        }
    }
}

/// `[push]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PushConfig {
    /// Deliver notifications to push gateways (pushers). Off: pushers can be set, nothing is
    /// sent (unread counts and `/notifications` work either way).
    pub enabled: bool,
    /// Check push gateways' TLS certificates (off only for test networks).
    pub verify_tls: bool,
    /// IP ranges (CIDR) a push gateway may be at even when they are in the deny list.
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub ip_range_allowlist: Vec<ipnet::IpNet>,
    /// IP ranges (CIDR) push gateways may not be at, so a pusher URL cannot make the node call
    /// internal addresses. Default: as `[federation] ip_range_denylist`.
    #[serde(deserialize_with = "list_or_csv")]
    #[schemars(with = "Vec<String>")]
    pub ip_range_denylist: Vec<ipnet::IpNet>,
    /// Seconds to wait for a gateway's answer.
    pub request_timeout_secs: u64,
    /// Milliseconds before the first retry; each further retry waits twice as long (with jitter),
    /// up to an hour.
    pub retry_initial_ms: u64,
    /// A notification not delivered after this many seconds is dropped.
    pub give_up_after_secs: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            verify_tls: true,
            ip_range_allowlist: Vec::new(),
            ip_range_denylist: DENIED.iter().filter_map(|r| r.parse().ok()).collect(),
            request_timeout_secs: 10,
            retry_initial_ms: 2_000,
            give_up_after_secs: 24 * 60 * 60,
        }
    }
}

/// `[presence]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PresenceConfig {
    /// Keep, show and federate presence. Off: nothing is kept or sent, clients' presence
    /// updates are accepted and ignored, and everyone shows offline. Presence lives in memory:
    /// after a restart users are offline until their clients sync again.
    pub enabled: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { enabled: true }
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct MediaConfig {
    /// Largest upload accepted, in bytes (`413 M_TOO_LARGE` above). Files are stored under
    /// `<data_dir>/media/`.
    pub max_upload_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_bytes: 50 * 1024 * 1024,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct LogConfig {
    /// `human` (readable lines) or `json` (one JSON object per line, for log collectors).
    pub format: LogFormat,
    /// Filter in `tracing` syntax, e.g. `info` or `info,unitas=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            // ruma's event authorization logs every allowed event at INFO, and its push-rule
            // evaluation opens an INFO span for every field of every event it flattens (about
            // twenty per message, 3-6 % of the node's CPU in the client load run): neither is
            // for an operator.
            level: "info,ruma_state_res=warn,ruma_common::push=warn".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// JSON objects.
    Json,
}

/// One `[[territory]]`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerritoryConfig {
    /// Territory code: ISO 3166-1 alpha-2 in capitals (`DK`) or a region code in small letters
    /// (`eu`). Required.
    #[schemars(with = "String")]
    pub code: TerritoryCode,
    /// Matrix server name of the territory (`dk.unitas.example`). Required; fixed once users
    /// exist.
    pub server_name: String,
    /// Human-readable name (`Denmark`).
    #[serde(default)]
    pub name: Option<String>,
    /// File with the territory's ed25519 signing key (`ed25519 <version> <base64 seed>`,
    /// Synapse's format). Generated on first start when missing. Default:
    /// `<data_dir>/keys/<code>.signing.key`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// Client API base URL of this territory for `/.well-known/matrix/client`. Default:
    /// `server.public_baseurl`.
    #[serde(default)]
    pub client_base_url: Option<String>,
    /// Where peers reach this territory's federation API, published in
    /// `/.well-known/matrix/server` (`host[:port]`). Default: the server name.
    #[serde(default)]
    pub federation_host: Option<String>,
}

/// A territory with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTerritory {
    /// Code.
    pub code: TerritoryCode,
    /// Server name.
    pub server_name: String,
    /// Human-readable name.
    pub name: Option<String>,
    /// Signing key file.
    pub signing_key_file: PathBuf,
    /// Base URL for `/.well-known/matrix/client`.
    pub client_base_url: String,
    /// `m.server` for `/.well-known/matrix/server`.
    pub federation_host: String,
}

/// A configuration that could not be loaded or is invalid. The message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file is missing or unreadable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A value has the wrong type or syntax (figment names key and source).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is well-formed but not acceptable.
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid {
        /// The key, `section.key`.
        key: String,
        /// Why.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Flags given on the command line; each overrides the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--database`
    pub database: Option<String>,
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--federation-listen`
    pub federation_listen: Option<SocketAddr>,
    /// `--server-name`
    pub server_name: Option<String>,
    /// `--tls-cert`
    pub tls_cert_file: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key_file: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

/// A loaded configuration and what loading noticed.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, validated.
    pub config: Config,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// Keys that were given but mean nothing (`section.key`); the caller warns about them.
    pub unknown_keys: Vec<String>,
}

/// The config file a command reads when none is given on its command line: `$UNITAS_CONFIG`,
/// else `./unitas.toml` when it is a file, else none.
pub fn default_config_file() -> Option<PathBuf> {
    std::env::var_os("UNITAS_CONFIG")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("unitas.toml")).filter(|p| p.is_file()))
}

impl Config {
    /// Loads defaults < `file` < environment (`vars`, normally `std::env::vars()`) < `overrides`,
    /// then validates. `file` must exist when given.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            // Parse here, so a syntax error is reported with the file's name.
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvVars::from_vars(vars));
        figment = figment.merge(Flags(overrides_dict(overrides)));

        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut unknown_keys = Vec::new();
        if let Ok(value) = figment.extract::<figment::value::Value>() {
            let _: Result<Config, _> = serde_ignored::deserialize(&value, |path| {
                unknown_keys.push(path.to_string());
            });
        }
        if let Some(server_name) = &overrides.server_name {
            match config.territories.len() {
                0 => {}
                1 => config.territories[0].server_name = server_name.clone(),
                _ => {
                    return Err(invalid(
                        "--server-name",
                        "the config lists several territories; set each one's server_name there",
                    ));
                }
            }
        }
        config.validate()?;
        Ok(Loaded {
            config,
            file: file.map(Path::to_owned),
            unknown_keys,
        })
    }

    /// Checks every value that parsing alone cannot, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.territories.is_empty() {
            check_server_name("server.server_name", &self.server.server_name)?;
        }
        if let Some(url) = &self.server.public_baseurl {
            check_http_url("server.public_baseurl", url)?;
        }
        match (&self.server.tls_cert_file, &self.server.tls_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "server.tls_key_file",
                    "must be set with tls_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server.tls_cert_file",
                    "must be set with tls_key_file",
                ));
            }
            _ => {}
        }
        if self.server.max_request_body_bytes < 1024 {
            return Err(invalid(
                "server.max_request_body_bytes",
                "must be at least 1024",
            ));
        }
        let database = self.database_url();
        let scheme = database.split_once(':').map(|(s, _)| s).unwrap_or("");
        if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
            return Err(invalid(
                "storage.database",
                format!(
                    "unknown database scheme `{scheme}`: use sqlite://<path> or postgres://..."
                ),
            ));
        }
        if self.storage.max_connections == 0 {
            return Err(invalid("storage.max_connections", "must be at least 1"));
        }
        if self.federation.key_validity_secs < 60 {
            return Err(invalid(
                "federation.key_validity_secs",
                "must be at least 60",
            ));
        }
        if self.registration.shared_secret.is_some()
            && self.registration.shared_secret_file.is_some()
        {
            return Err(invalid(
                "registration.shared_secret",
                "set either shared_secret or shared_secret_file",
            ));
        }
        if !matches!(self.rooms.default_version.as_str(), "10" | "11" | "12") {
            return Err(invalid(
                "rooms.default_version",
                format!(
                    "unsupported room version {:?}: use 10, 11 or 12",
                    self.rooms.default_version
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        for key in &self.registry.authorities {
            unitas_territory::record::AuthorityKey::parse(key)
                .map_err(|e| invalid("registry.authorities", e.to_string()))?;
        }
        if let Some(url) = &self.registry.federation_url {
            check_http_url("registry.federation_url", url)?;
        }
        for uri in &self.voip.turn_uris {
            if !(uri.starts_with("turn:") || uri.starts_with("turns:")) {
                return Err(invalid(
                    "voip.turn_uris",
                    format!("{uri:?}: a TURN URI starts with turn: or turns:"),
                ));
            }
        }
        if !self.voip.turn_uris.is_empty() && self.voip.turn_shared_secret.is_none() {
            return Err(invalid(
                "voip.turn_shared_secret",
                "TURN URIs need the TURN server's shared secret",
            ));
        }
        for focus in &self.voip.rtc_foci {
            check_http_url(
                "voip.rtc_foci.livekit_service_url",
                &focus.livekit_service_url,
            )?;
        }
        if let Some(region) = &self.registry.region {
            TerritoryCode::parse(region).map_err(|e| invalid("registry.region", e.to_string()))?;
        }
        for (field, addrs) in [
            ("dht.listen", &self.dht.listen),
            ("dht.bootstrap", &self.dht.bootstrap),
            ("dht.announce", &self.dht.announce),
        ] {
            for addr in addrs {
                addr.parse::<unitas_territory::dht::Multiaddr>()
                    .map_err(|e| invalid(field, format!("{addr:?}: {e}")))?;
            }
        }
        if self.dht.publish_interval_secs < 10 || self.dht.sweep_interval_secs < 10 {
            return Err(invalid(
                "dht.publish_interval_secs",
                "dht intervals must be at least 10 seconds",
            ));
        }

        let mut codes = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.territories.iter().enumerate() {
            let key = |field: &str| format!("territory[{i}].{field}");
            check_server_name(&key("server_name"), &t.server_name)?;
            if !codes.insert(t.code.as_str()) {
                return Err(invalid(
                    key("code"),
                    format!("territory {} is listed twice", t.code),
                ));
            }
            if !names.insert(t.server_name.to_ascii_lowercase()) {
                return Err(invalid(
                    key("server_name"),
                    format!("{} is used twice", t.server_name),
                ));
            }
            if let Some(url) = &t.client_base_url {
                check_http_url(&key("client_base_url"), url)?;
            }
            if let Some(host) = &t.federation_host {
                check_server_name(&key("federation_host"), host)?;
            }
        }
        Ok(())
    }

    /// The database URL, with the SQLite default under the data directory.
    pub fn database_url(&self) -> String {
        match &self.storage.database {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.server.data_dir.join("unitas.db").display()
            ),
        }
    }

    /// The client API base URL published to clients.
    pub fn client_base_url(&self) -> String {
        match &self.server.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => listener_url("http", self.server.listen),
        }
    }

    /// The federation base URL this node publishes in its node record: `[registry]
    /// federation_url`, else `https://<federation_listen>`.
    pub fn federation_base_url(&self) -> String {
        match &self.registry.federation_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => listener_url("https", self.server.federation_listen),
        }
    }

    /// The hosted territories with defaults filled in; the first is the default territory.
    pub fn resolved_territories(&self) -> Vec<ResolvedTerritory> {
        let keys_dir = self.server.data_dir.join("keys");
        let resolve = |t: &TerritoryConfig| ResolvedTerritory {
            code: t.code.clone(),
            server_name: t.server_name.clone(),
            name: t.name.clone(),
            signing_key_file: t
                .signing_key_file
                .clone()
                .unwrap_or_else(|| keys_dir.join(format!("{}.signing.key", t.code))),
            client_base_url: t
                .client_base_url
                .clone()
                .unwrap_or_else(|| self.client_base_url()),
            federation_host: t
                .federation_host
                .clone()
                .unwrap_or_else(|| t.server_name.clone()),
        };
        if self.territories.is_empty() {
            let default = TerritoryConfig {
                code: TerritoryCode::parse(DEFAULT_TERRITORY_CODE)
                    .unwrap_or_else(|_| unreachable!()),
                server_name: self.server.server_name.clone(),
                name: None,
                signing_key_file: None,
                client_base_url: None,
                federation_host: None,
            };
            vec![resolve(&default)]
        } else {
            self.territories.iter().map(resolve).collect()
        }
    }

    /// The shared registration secret, read from its file when configured that way.
    pub fn registration_shared_secret(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(secret) = &self.registration.shared_secret {
            return Ok(Some(secret.clone()));
        }
        match &self.registration.shared_secret_file {
            Some(path) => read_secret(path).map(Some),
            None => Ok(None),
        }
    }

    /// The registration tokens, read from their file when configured.
    pub fn registration_tokens(&self) -> Result<Vec<Secret>, ConfigError> {
        match &self.registration.tokens_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Secret::new(l.to_owned()))
                    .collect())
            }
            None => Ok(Vec::new()),
        }
    }

    /// The PostgreSQL password, when a password file is configured.
    pub fn database_password(&self) -> Result<Option<Secret>, ConfigError> {
        self.storage
            .database_password_file
            .as_deref()
            .map(read_secret)
            .transpose()
    }

    /// The storage crate's options for this config.
    pub fn store_options(&self) -> Result<unitas_storage::StoreOptions, ConfigError> {
        Ok(unitas_storage::StoreOptions {
            max_connections: self.storage.max_connections,
            connect_timeout: Duration::from_secs(self.storage.connect_timeout_secs.max(1)),
            password: self.database_password()?.map(|s| s.expose().to_owned()),
            sqlite_synchronous: match self.storage.sqlite_synchronous {
                SqliteSynchronous::Normal => unitas_storage::SqliteSynchronous::Normal,
                SqliteSynchronous::Full => unitas_storage::SqliteSynchronous::Full,
            },
            sqlite_busy_timeout: Duration::from_millis(self.storage.sqlite_busy_timeout_ms),
            sqlite_wal_size_limit: self.storage.sqlite_wal_size_limit_bytes,
            sqlite_cache_size_kib: self.storage.sqlite_cache_size_kib,
        })
    }

    /// The effective settings as TOML, secrets and database passwords redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.storage.database = Some(unitas_storage::redact_url(&self.database_url()));
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
}

fn check_server_name(key: &str, name: &str) -> Result<(), ConfigError> {
    <&ruma::ServerName>::try_from(name)
        .map(|_| ())
        .map_err(|e| {
            invalid(
                key,
                format!("{name:?} is not a valid server name (host[:port]): {e}"),
            )
        })
}

fn check_http_url(key: &str, text: &str) -> Result<(), ConfigError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("{text:?} must be an http:// or https:// URL"),
        )),
        Err(e) => Err(invalid(key, format!("{text:?} is not a URL: {e}"))),
    }
}

/// The `UNITAS__SECTION__KEY` environment variables as a config layer. Values are read the way
/// figment reads environment values (`true`, numbers and `[a, b]` lists are typed; anything else
/// is a string). Errors name the variable.
struct EnvVars(Dict);

impl EnvVars {
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> EnvVars {
        let mut root = Dict::new();
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            insert_path(&mut root, &path, value);
        }
        EnvVars(root)
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            format!(
                "{ENV_PREFIX}{} ({})",
                keys.join("__").to_ascii_uppercase(),
                keys.join(".")
            )
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// The command-line flags as the top config layer.
struct Flags(Dict);

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// The overrides as a nested dictionary in config shape (only the flags that were given).
fn overrides_dict(o: &Overrides) -> Dict {
    let mut server = Dict::new();
    let mut storage = Dict::new();
    let mut log = Dict::new();
    let path = |p: &PathBuf| Value::from(p.display().to_string());
    if let Some(v) = &o.data_dir {
        server.insert("data_dir".into(), path(v));
    }
    if let Some(v) = &o.listen {
        server.insert("listen".into(), Value::from(v.to_string()));
    }
    if let Some(v) = &o.federation_listen {
        server.insert("federation_listen".into(), Value::from(v.to_string()));
    }
    if let Some(v) = &o.server_name {
        server.insert("server_name".into(), Value::from(v.clone()));
    }
    if let Some(v) = &o.tls_cert_file {
        server.insert("tls_cert_file".into(), path(v));
    }
    if let Some(v) = &o.tls_key_file {
        server.insert("tls_key_file".into(), path(v));
    }
    if let Some(v) = &o.database {
        storage.insert("database".into(), Value::from(v.clone()));
    }
    if let Some(v) = o.log_format {
        let name = match v {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        };
        log.insert("format".into(), Value::from(name));
    }
    let mut dict = Dict::new();
    for (name, section) in [("server", server), ("storage", storage), ("log", log)] {
        if !section.is_empty() {
            dict.insert(name.into(), Value::from(section));
        }
    }
    dict
}

/// Accepts a list, or a comma-separated string (as environment variables give it).
fn list_or_csv<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    let items = match ListOrCsv::deserialize(deserializer)? {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|item| {
            item.parse()
                .map_err(|e| serde::de::Error::custom(format!("{item:?}: {e}")))
        })
        .collect()
}

/// Accepts `"12"` or `12` (environment variables arrive as numbers when they look like one).
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(u64),
    }
    Ok(match StringOrNumber::deserialize(deserializer)? {
        StringOrNumber::String(s) => s,
        StringOrNumber::Number(n) => n.to_string(),
    })
}

#[cfg(test)]
mod tests;
