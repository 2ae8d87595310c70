//! `unitas registry ...`: the registry authority's offline tools (key generation, signing
//! territory records), publishing records into the DHT, checking a record as a node would, and
//! what a node knows of the registry.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use std::time::Duration;
use unitas_federation::SigningKey;
use unitas_territory::TerritoryCode;

use unitas_territory::dht::{DhtConfig, Multiaddr};
use unitas_territory::record::{AuthorityKey, Signatures, TerritoryRecord};
use unitas_territory::registry::{Registry, node_key, territory_key};

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
    /// made on first use): its ID, URLs, region and the territories of its config. A running
    /// node with `[dht] listen` publishes it by itself; this is for `records_dir` seeding and
    /// for the authority, which needs the node ID to sign a territory record.
    NodeRecord {
        /// The federation base URL peers use (`https://eu.unitas.example:8448`; default:
        /// `[registry] federation_url`, else `https://<federation_listen>`).
        #[arg(long)]
        federation_url: Option<String>,
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
    /// Put signed records (territory records from `sign`, node records) into the network's DHT
    /// through its peers, and check that peers hold them. Each record is checked first as every
    /// node checks it (the config's authorities).
    Publish {
        /// Record files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A DHT peer to go through (libp2p address, repeatable). Default: the config's
        /// `[dht] bootstrap` and the node's own `[dht] listen` addresses.
        #[arg(long = "peer", value_name = "MULTIADDR")]
        peers: Vec<String>,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// What the running node knows of the registry: every node (region, URLs, territories,
    /// last seen) and every territory (server name, version, node, client URL, valid until).
    /// When the node does not answer, what a node started with this config would know from
    /// `[registry] records_dir`.
    Status {
        /// The node's client API (default: the config's public base URL).
        #[arg(long)]
        url: Option<String>,
        /// Do not ask the node: show what the config's `records_dir` gives.
        #[arg(long, conflicts_with = "url")]
        offline: bool,
        /// Config file (default: $UNITAS_CONFIG, else ./unitas.toml if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// One territory's signed record as the running node holds it (looked up in the DHT when
    /// missing), as JSON; offline, as `records_dir` gives it.
    Show {
        /// Territory code (`DK`; `UK` finds `GB`).
        code: String,
        /// The node's client API (default: the config's public base URL).
        #[arg(long)]
        url: Option<String>,
        /// Do not ask the node: show what the config's `records_dir` gives.
        #[arg(long, conflicts_with = "url")]
        offline: bool,
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
        RegistryCommand::Status {
            url,
            offline,
            config,
        } => {
            if offline {
                status_offline(config.as_deref())
            } else {
                status(url, config.as_deref())
            }
        }
        RegistryCommand::Publish {
            files,
            peers,
            config,
        } => publish(&files, &peers, config.as_deref()),
        RegistryCommand::NodeRecord {
            federation_url,
            client_url,
            region,
            config,
        } => node_record(federation_url, client_url, region, config.as_deref()),
        RegistryCommand::Show {
            code,
            url,
            offline,
            config,
        } => {
            if offline {
                show_offline(&code, config.as_deref())
            } else {
                show(&code, url, config.as_deref())
            }
        }
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
    federation_url: Option<String>,
    client_url: Option<String>,
    region: Option<String>,
    config: Option<&Path>,
) -> Result<(), String> {
    let mut config = node_config(config)?;
    if let Some(region) = region {
        config.registry.region = Some(region);
    }
    if let Some(url) = federation_url {
        config.registry.federation_url = Some(url);
    }
    if let Some(url) = client_url {
        config.server.public_baseurl = Some(url);
    }
    let (key, _) = SigningKey::load_or_generate(&crate::registry::node_key_file(&config))
        .map_err(|e| e.to_string())?;
    let identity = crate::registry::NodeIdentity::of(&config, std::sync::Arc::new(key))?;
    let record = identity.record(Vec::new())?;
    record
        .verify(now_ms(), 0)
        .map_err(|e| format!("the record would be refused: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?
    );
    Ok(())
}

use crate::migration::runtime;

/// GET a JSON document from the running node's client API.
fn node_get(base: &str, path: &str) -> Result<serde_json::Value, String> {
    runtime()?.block_on(crate::migration::get_json(base, path))
}

fn ago(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then) / 1000;
    if secs < 120 {
        format!("{secs} s ago")
    } else if secs < 7200 {
        format!("{} min ago", secs / 60)
    } else {
        format!("{} h ago", secs / 3600)
    }
}

fn status(url: Option<String>, config: Option<&Path>) -> Result<(), String> {
    let base = match url {
        Some(url) => url,
        None => node_config(config)?.client_base_url(),
    };
    let online = node_get(&base, "/_unitas/client/v1/nodes").and_then(|nodes| {
        node_get(&base, "/_unitas/client/v1/territories").map(|territories| (nodes, territories))
    });
    let (nodes, territories) = match online {
        Ok(answers) => answers,
        Err(error) => {
            println!("node not reachable ({error}); offline view from the config's records_dir:");
            return status_offline(config);
        }
    };
    let now = nodes["now"].as_u64().unwrap_or_else(now_ms);
    let empty = Vec::new();
    let nodes = nodes["nodes"].as_array().unwrap_or(&empty);
    println!("nodes ({}), as {base} knows them:", nodes.len());
    for n in nodes {
        let codes: Vec<&str> = n["territories"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        println!(
            "  {:<44} {:<4} last seen {:<12} client {} federation {} territories {}",
            n["node_id"].as_str().unwrap_or("?"),
            n["region"].as_str().unwrap_or("?"),
            ago(now, n["updated_at"].as_u64().unwrap_or(0)),
            n["client_url"].as_str().unwrap_or("?"),
            n["federation_url"].as_str().unwrap_or("?"),
            codes.join(","),
        );
    }
    let territories = territories["territories"].as_array().unwrap_or(&empty);
    println!("territories ({}):", territories.len());
    for t in territories {
        println!(
            "  {:<6} {:<32} v{:<4} region {:<4} node {} client {} node last seen {}{}",
            t["code"].as_str().unwrap_or("?"),
            t["server_name"].as_str().unwrap_or("?"),
            t["version"].as_u64().unwrap_or(0),
            t["region"].as_str().unwrap_or("?"),
            t["node_id"].as_str().unwrap_or("?"),
            t["client_url"].as_str().unwrap_or("-"),
            t["node_last_seen_ms"]
                .as_u64()
                .map_or_else(|| "never".to_owned(), |seen| ago(now, seen)),
            if t["hosted_here"].as_bool() == Some(true) {
                " (hosted here)"
            } else {
                ""
            },
        );
    }
    Ok(())
}

fn status_offline(config: Option<&Path>) -> Result<(), String> {
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
            .map(|n| format!("node seen {}", ago(now, n.updated_at)))
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

fn show(code: &str, url: Option<String>, config: Option<&Path>) -> Result<(), String> {
    let base = match url {
        Some(url) => url,
        None => node_config(config)?.client_base_url(),
    };
    let record = match node_get(&base, &format!("/_unitas/client/v1/territories/{code}")) {
        Ok(answer) => answer["record"].clone(),
        Err(error) if error.contains(" 404 ") => return Err(error),
        Err(error) => {
            eprintln!("node not reachable ({error}); offline view from the config's records_dir");
            return show_offline(code, config);
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn show_offline(code: &str, config: Option<&Path>) -> Result<(), String> {
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

/// The DHT peers to publish through: the ones given, else the config's bootstrap peers and the
/// node's own listen addresses (an unspecified address as loopback).
fn publish_peers(peers: &[String], config: Option<&Path>) -> Result<Vec<Multiaddr>, String> {
    let texts: Vec<String> = if peers.is_empty() {
        let config = node_config(config)?;
        config
            .dht
            .bootstrap
            .iter()
            .cloned()
            .chain(config.dht.listen.iter().map(|a| {
                a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/")
                    .replace("/ip6/::/", "/ip6/::1/")
            }))
            .filter(|a| !a.ends_with("/tcp/0"))
            .collect()
    } else {
        peers.to_vec()
    };
    if texts.is_empty() {
        return Err("no DHT peer: give --peer or set [dht] bootstrap/listen in the config".into());
    }
    texts
        .iter()
        .map(|a| a.parse().map_err(|e| format!("peer address {a:?}: {e}")))
        .collect()
}

fn publish(files: &[PathBuf], peers: &[String], config: Option<&Path>) -> Result<(), String> {
    let node = node_config(config)?;
    let authorities = node
        .registry
        .authorities
        .iter()
        .map(|k| AuthorityKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("registry.authorities: {e}"))?;
    let peers = publish_peers(peers, config)?;
    let mut records = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let key = match (value["code"].as_str(), value["node_id"].as_str()) {
            (Some(code), _) => territory_key(code),
            (None, Some(node_id)) => node_key(node_id),
            _ => return Err(format!("{}: not a registry record", file.display())),
        };
        let version = value["version"]
            .as_u64()
            .or_else(|| value["updated_at"].as_u64())
            .unwrap_or(0);
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        records.push((file.clone(), key, version, bytes));
    }
    let registry = std::sync::Arc::new(std::sync::RwLock::new(Registry::new(authorities)));
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("system randomness: {e}"))?;
    let dht_config = DhtConfig {
        bootstrap: peers,
        ..DhtConfig::default()
    };
    runtime()?.block_on(async move {
        let (client, event_loop) =
            unitas_territory::dht::start(seed, dht_config, registry).map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(event_loop.run(async move {
            let _ = stopped.await;
        }));
        let outcome = async {
            tokio::time::timeout(Duration::from_secs(20), client.wait_for_peers(1))
                .await
                .map_err(|_| "no DHT peer answered within 20 s".to_owned())?
                .map_err(|e| e.to_string())?;
            // All at once: each put waits for the closest peers' answers.
            let mut puts = tokio::task::JoinSet::new();
            for (file, key, _, bytes) in &records {
                let (client, file, key, bytes) =
                    (client.clone(), file.clone(), key.clone(), bytes.clone());
                puts.spawn(async move {
                    client
                        .publish(key, bytes)
                        .await
                        .map_err(|e| format!("{}: {e}", file.display()))
                });
            }
            while let Some(put) = puts.join_next().await {
                put.map_err(|e| e.to_string())??;
            }
            // Peers check each record on arrival; ask until they hold it.
            for (file, key, version, bytes) in records {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let holders = loop {
                    let found = client
                        .lookup(key.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    let holders = found
                        .iter()
                        .filter(|f| f.peer.is_some() && f.value == bytes)
                        .count();
                    if holders > 0 || tokio::time::Instant::now() >= deadline {
                        break holders;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                if holders == 0 {
                    return Err(format!(
                        "{}: {key} version {version}: no peer holds it (they refused it, or \
                         hold a newer one; see their logs)",
                        file.display()
                    ));
                }
                println!("published {key} version {version}: {holders} peer(s) hold it");
            }
            Ok(())
        }
        .await;
        let _ = stop.send(());
        let _ = running.await;
        outcome
    })
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
