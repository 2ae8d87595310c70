//! `unitas registry ...`: the registry authority's offline tools (key generation, signing
//! territory records) and checking a record as a node would.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use unitas_federation::SigningKey;
use unitas_territory::TerritoryCode;
use unitas_territory::record::{AuthorityKey, Signatures, TerritoryRecord};

/// `unitas registry`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Generate a registry authority signing key (kept offline by the network's operators) and
    /// print its public form, `ed25519:<id>=<key>`, for every node's config.
    Keygen {
        /// Where to write the key (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a territory record with an authority key and print it as JSON (works offline).
    Sign(SignArgs),
    /// Print this node's own record, signed with its node key (`<data_dir>/keys/node.signing.key`,
    /// made on first use): its ID, URLs, region and the territories of its config. Goes into
    /// other nodes' `[registry] records_dir` (the DHT will carry it).
    NodeRecord {
        /// The federation base URL peers use (`https://eu.unitas.example:8448`).
        #[arg(long)]
        federation_url: String,
        /// The client API base URL (default: the config's public base URL).
        #[arg(long)]
        client_url: Option<String>,
        /// The node's region (default: the launch region of its first territory).
        #[arg(long)]
        region: Option<String>,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The territories this node's registry knows (from `[registry]` of the config: the
    /// authorities and the records that pass their checks): code, server name, version, node,
    /// client URL, valid until.
    Status {
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// One territory's record as this node's registry holds it, as JSON.
    Show {
        /// Territory code (`DK`; `UK` finds `GB`).
        code: String,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a territory record (JSON file, `-` for stdin) as every node does: fields, validity
    /// window, and a signature by one of the given authority keys.
    Verify {
        /// The record.
        file: PathBuf,
        /// Authority public key, `ed25519:<id>=<key>` (repeatable).
        #[arg(long = "authority", value_name = "KEY", required = true)]
        authorities: Vec<String>,
    },
}

/// `unitas registry sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The authority key file (from `unitas registry keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Territory code (`DK`, or a region such as `eu`).
    #[arg(long)]
    code: String,
    /// The territory's Matrix server name.
    #[arg(long)]
    server_name: String,
    /// The serving node's ID (its ed25519 public key, unpadded base64).
    #[arg(long)]
    node_id: String,
    /// Region code (default: the launch region of the country).
    #[arg(long)]
    region: Option<String>,
    /// Record version; must be higher than the version in force.
    #[arg(long = "record-version", value_name = "N")]
    record_version: u64,
    /// English name (default: the shipped ISO 3166-1 or region name).
    #[arg(long)]
    name: Option<String>,
    /// Days the record is valid from now.
    #[arg(long, default_value_t = 30)]
    valid_days: u64,
}

/// Runs a registry command; prints to stdout.
pub fn run(command: RegistryCommand) -> Result<(), String> {
    match command {
        RegistryCommand::Keygen { out } => keygen(&out),
        RegistryCommand::Sign(args) => sign(&args),
        RegistryCommand::Verify { file, authorities } => verify(&file, &authorities),
        RegistryCommand::Status { config } => status(config.as_deref()),
        RegistryCommand::NodeRecord {
            federation_url,
            client_url,
            region,
            config,
        } => node_record(&federation_url, client_url, region, config.as_deref()),
        RegistryCommand::Show { code, config } => show(&code, config.as_deref()),
    }
}

/// The node's config: the file given, `$UNITAS_CONFIG`, or `./unitas.toml` when present.
fn node_config(config: Option<&Path>) -> Result<crate::config::Config, String> {
    let file = config
        .map(Path::to_owned)
        .or_else(crate::config::default_config_file);
    crate::config::Config::load(
        file.as_deref(),
        std::env::vars(),
        &crate::config::Overrides::default(),
    )
    .map(|loaded| loaded.config)
    .map_err(|e| e.to_string())
}

/// The registry as a node with this config would start with.
fn node_registry(config: Option<&Path>) -> Result<unitas_territory::registry::Registry, String> {
    crate::registry::load(&node_config(config)?.registry).map_err(|e| e.to_string())
}

fn node_record(
    federation_url: &str,
    client_url: Option<String>,
    region: Option<String>,
    config: Option<&Path>,
) -> Result<(), String> {
    let config = node_config(config)?;
    let territories: Vec<TerritoryCode> = config
        .resolved_territories()
        .into_iter()
        .map(|t| t.code)
        .collect();
    let region = match region {
        Some(region) => region,
        None => territories
            .first()
            .and_then(|t| {
                if t.is_country() {
                    unitas_territory::catalog::region_of(t.as_str()).map(|r| r.code.to_owned())
                } else {
                    Some(t.to_string())
                }
            })
            .ok_or("the node's region is not known from its territories: give --region")?,
    };
    let key_file = config.server.data_dir.join("keys").join("node.signing.key");
    let (key, _) = SigningKey::load_or_generate(&key_file).map_err(|e| e.to_string())?;
    let record = unitas_territory::record::NodeRecord {
        node_id: String::new(),
        client_url: client_url.unwrap_or_else(|| config.client_base_url()),
        federation_url: federation_url.to_owned(),
        dht_addrs: Vec::new(),
        region: TerritoryCode::parse(&region).map_err(|e| e.to_string())?,
        territories,
        updated_at: now_ms(),
        signatures: Signatures::new(),
    }
    .sign(&key)
    .map_err(|e| e.to_string())?;
    record
        .verify(now_ms(), 0)
        .map_err(|e| format!("the record would be refused: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn status(config: Option<&Path>) -> Result<(), String> {
    let registry = node_registry(config)?;
    let now = now_ms();
    let routes = registry.routes(now);
    if routes.is_empty() {
        println!("no territory records (see [registry] in the config)");
    }
    for route in routes {
        let t = route.territory;
        let seen = route
            .node
            .map(|n| {
                format!(
                    "node updated {} s ago",
                    now.saturating_sub(n.updated_at) / 1000
                )
            })
            .unwrap_or_else(|| "no node record".into());
        println!(
            "{:<6} {:<32} v{:<4} node {} ({}) client {} valid {} h more",
            t.code,
            t.server_name,
            t.version,
            t.node_id,
            seen,
            route.node.map_or("-", |n| n.client_url.as_str()),
            t.not_after.saturating_sub(now) / 3_600_000,
        );
    }
    Ok(())
}

fn show(code: &str, config: Option<&Path>) -> Result<(), String> {
    let registry = node_registry(config)?;
    let route = registry
        .route(code, now_ms())
        .ok_or_else(|| format!("no valid record of {code} in this node's registry"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(route.territory).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn now_ms() -> u64 {
    u64::try_from(crate::node::now_ms()).unwrap_or(0)
}

fn keygen(out: &Path) -> Result<(), String> {
    if out.exists() {
        return Err(format!("{} exists; not overwriting a key", out.display()));
    }
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    key.write_new(out).map_err(|e| e.to_string())?;
    println!("{}", AuthorityKey::of(&key));
    Ok(())
}

fn sign(args: &SignArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.key)
        .map_err(|e| format!("reading {}: {e}", args.key.display()))?;
    let key = SigningKey::from_key_file(&text, &args.key).map_err(|e| e.to_string())?;
    let code_text = unitas_territory::catalog::iso_code(&args.code);
    let code = TerritoryCode::parse(code_text).map_err(|e| e.to_string())?;
    let region = match &args.region {
        Some(region) => region.clone(),
        None if !code.is_country() => code.to_string(),
        None => unitas_territory::catalog::region_of(code.as_str())
            .map(|r| r.code.to_owned())
            .ok_or_else(|| format!("{code} is in no launch region: give --region"))?,
    };
    let region = TerritoryCode::parse(&region).map_err(|e| e.to_string())?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => unitas_territory::catalog::name_of(code.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no shipped name for {code}: give --name"))?,
    };
    let now = now_ms();
    let record = TerritoryRecord {
        code,
        name,
        server_name: args.server_name.clone(),
        node_id: args.node_id.clone(),
        region,
        version: args.record_version,
        not_before: now,
        not_after: now + args.valid_days.max(1) * 86_400_000,
        signatures: Signatures::new(),
    }
    .sign(&key)
    .map_err(|e| e.to_string())?;
    // What we print must pass the check nodes make.
    record
        .verify(&[AuthorityKey::of(&key)], now)
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn verify(file: &Path, authorities: &[String]) -> Result<(), String> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?
    };
    let record: TerritoryRecord =
        serde_json::from_str(&text).map_err(|e| format!("not a territory record: {e}"))?;
    let keys = authorities
        .iter()
        .map(|k| AuthorityKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    record.verify(&keys, now_ms()).map_err(|e| e.to_string())?;
    println!(
        "valid: {} -> {} (node {}), version {}",
        record.code, record.server_name, record.node_id, record.version
    );
    Ok(())
}
