//! Moving a territory to another node: `unitas territory export`, `import` and `validate`.
//!
//! The export is a directory:
//! - `manifest.json`: the territory, when and from which node, the registry record version in
//!   force, and for every file its row or event count and SHA-256;
//! - `signing.key`: the territory's signing key (the new node signs as the territory with it;
//!   keep the export as secret as the key);
//! - `tables/<table>.jsonl`: the territory's rows (accounts, devices, access tokens, profiles,
//!   account data, E2EE keys, media records, aliases, ...), see `unitas_storage::TABLES`;
//! - `server_keys.jsonl`: public keys of the servers whose events the rooms hold, including the
//!   exporting node's other territories, so the new node can check every event offline;
//! - `rooms/<n>.json`: every room a user of the territory has a membership in, with all its
//!   events as signed (outliers, then the timeline in order) and the state before the last one;
//! - `media/<id>`: the territory's uploads.
//!
//! The export turns the territory read-only on the old node first (and waits until a running
//! node says so), so nothing changes under it; `--standby` leaves it serving (a snapshot for a
//! standby node, which takes over from it when the authority re-signs the record to it). The import checks the files against the
//! manifest, adds the territory to the new node's config with the exported key, writes the rows
//! in one transaction, checks every event's signatures and auth as any received event and
//! stores each room's history, copies the media, and ends with the validation (counts and
//! hashes of what the new database holds, compared with the manifest). Importing twice adds
//! nothing; `validate` repeats the last step alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use unitas_storage::{
    RoomEvents, SERVER_KEYS, Store, TABLES, TableSpec, Territories, TerritoryTransfer,
};

use crate::config::{Config, ResolvedTerritory};

/// The export format's name and version.
pub const FORMAT: &str = "unitas-territory-export/1";

/// What an export holds, with counts and hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Territory code.
    pub code: String,
    /// Its server name.
    pub server_name: String,
    /// When the export was made (ms).
    pub exported_at: i64,
    /// The registry record version in force when it was made (the new record must be higher).
    pub record_version: u64,
    /// Rows per table: count and SHA-256 of the lines.
    pub tables: BTreeMap<String, Counted>,
    /// Server keys.
    pub server_keys: Counted,
    /// Rooms: ID -> events and SHA-256 of their sorted IDs.
    pub rooms: BTreeMap<String, Counted>,
    /// Media files: ID -> size and SHA-256 of the bytes.
    pub media: BTreeMap<String, Counted>,
    /// SHA-256 of `signing.key`.
    pub signing_key_sha256: String,
}

/// A count and a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// Rows, events or bytes.
    pub count: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A room as exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomFile {
    room_id: String,
    room_version: String,
    /// Outliers first (`timeline: false`), then the timeline in order.
    events: Vec<RoomFileEvent>,
    /// Event IDs of the state before the last timeline event.
    state_before_last: Vec<String>,
    /// The room's other forward extremities (events without children besides the last one),
    /// each with the state before it: new events may name any of them as a parent.
    #[serde(default)]
    extremities: Vec<Extremity>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extremity {
    event_id: String,
    state_before: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomFileEvent {
    event_id: String,
    timeline: bool,
    json: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Count and digest of lines (sorted, so order does not matter).
fn counted_lines(lines: &[String]) -> Counted {
    let mut sorted: Vec<&String> = lines.iter().collect();
    sorted.sort();
    let mut hasher = sha2::Sha256::new();
    for line in sorted {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Counted {
        count: lines.len() as u64,
        sha256: hex::encode(hasher.finalize()),
    }
}

fn now_ms() -> i64 {
    crate::node::now_ms()
}

fn load_config(config: Option<&Path>) -> Result<(Config, Option<PathBuf>), String> {
    let file = config
        .map(Path::to_owned)
        .or_else(crate::config::default_config_file);
    let loaded = Config::load(
        file.as_deref(),
        std::env::vars(),
        &crate::config::Overrides::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok((loaded.config, loaded.file))
}

fn territory_of(config: &Config, code: &str) -> Result<ResolvedTerritory, String> {
    let code = unitas_territory::catalog::iso_code(code);
    config
        .resolved_territories()
        .into_iter()
        .find(|t| t.code.as_str() == code)
        .ok_or_else(|| format!("territory {code} is not configured on this node"))
}

async fn open_store(config: &Config) -> Result<Store, String> {
    let store = Store::connect(
        &config.database_url(),
        &config.store_options().map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok(store)
}

/// The async runtime of the commands that talk to a node, the DHT or the database.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

/// GET a JSON document from a running node's client API (`base` + `path`); a non-2xx answer
/// is an error naming the status and body.
pub(crate) async fn get_json(base: &str, path: &str) -> Result<Value, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{url}: {status} {body}"))
    }
}

async fn node_answer(base: &str, path: &str) -> Option<Value> {
    get_json(base, path).await.ok()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// `unitas territory export CODE --out DIR`.
pub fn export(
    code: &str,
    out: &Path,
    record_version: Option<u64>,
    standby: bool,
    config: Option<&Path>,
) -> Result<(), String> {
    let (config, _) = load_config(config)?;
    let territory = territory_of(&config, code)?;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!("{} exists and is not empty", out.display()));
    }
    runtime()?.block_on(export_async(
        &config,
        &territory,
        out,
        record_version,
        standby,
    ))
}

async fn export_async(
    config: &Config,
    territory: &ResolvedTerritory,
    out: &Path,
    record_version: Option<u64>,
    standby: bool,
) -> Result<(), String> {
    let code = territory.code.as_str();
    let server_name = territory.server_name.as_str();
    let base = config.client_base_url();
    let path = format!("/_unitas/client/v1/territories/{code}");
    // The record version in force: from the running node, else the records it starts with.
    let running = node_answer(&base, &path).await;
    let version = match (record_version, &running) {
        (Some(version), _) => version,
        (None, Some(answer)) if answer["version"].is_u64() => {
            answer["version"].as_u64().unwrap_or(0)
        }
        _ => {
            let registry = crate::registry::load(&config.registry).map_err(|e| e.to_string())?;
            registry
                .route(code, u64::try_from(now_ms()).unwrap_or(0))
                .map(|r| r.territory.version)
                .ok_or_else(|| {
                    format!(
                        "the registry version of {code} is unknown (the node at {base} does \
                         not answer and records_dir has no record): give --record-version"
                    )
                })?
        }
    };
    let store = open_store(config).await?;
    if standby {
        println!("standby snapshot: {code} keeps serving on this node");
    } else {
        store
            .set_territory_read_only(code, Some((now_ms(), i64::try_from(version).unwrap_or(0))))
            .await
            .map_err(|e| e.to_string())?;
        println!("{code} is read-only on this node from now (registry version {version})");
    }
    if !standby && running.is_some() {
        // Wait until the running node refuses writes and has none left in progress.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = node_answer(&base, &path).await;
            if state.as_ref().and_then(|s| s["state"].as_str()) == Some("read_only") {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the node at {base} did not turn {code} read-only within 20 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("the running node at {base} refuses writes of {code}");
    } else if running.is_none() {
        println!("no node answers at {base}: exporting from the database as it is");
    }

    let mut manifest = Manifest {
        format: FORMAT.into(),
        code: code.into(),
        server_name: server_name.into(),
        exported_at: now_ms(),
        record_version: version,
        tables: BTreeMap::new(),
        server_keys: counted_lines(&[]),
        rooms: BTreeMap::new(),
        media: BTreeMap::new(),
        signing_key_sha256: String::new(),
    };
    for table in TABLES {
        let lines = store
            .export_rows(table, code, server_name)
            .await
            .map_err(|e| e.to_string())?;
        write_lines(
            &out.join("tables").join(format!("{}.jsonl", table.name)),
            &lines,
        )?;
        println!("table {:<22} {:>8} rows", table.name, lines.len());
        manifest
            .tables
            .insert(table.name.to_owned(), counted_lines(&lines));
    }
    // Public keys: the servers we know, and this node's territories (remote to the new node).
    let mut keys = store
        .export_all_rows(&SERVER_KEYS)
        .await
        .map_err(|e| e.to_string())?;
    let signing_keys = TABLES
        .iter()
        .find(|t| t.name == "signing_keys")
        .ok_or("no signing_keys table")?;
    let valid_until =
        now_ms() + i64::try_from(config.federation.key_validity_secs).unwrap_or(0) * 1000;
    for other in store.list_territories().await.map_err(|e| e.to_string())? {
        for line in store
            .export_rows(signing_keys, &other.code, &other.server_name)
            .await
            .map_err(|e| e.to_string())?
        {
            let row: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            keys.push(
                json!({
                    "server_name": other.server_name,
                    "key_id": row["key_id"],
                    "public_key": row["public_key"],
                    "valid_until_ts": row["expired_ts"].as_i64().unwrap_or(valid_until),
                    "expired_ts": row["expired_ts"],
                    "fetched_ts": now_ms(),
                })
                .to_string(),
            );
        }
    }
    write_lines(&out.join("server_keys.jsonl"), &keys)?;
    manifest.server_keys = counted_lines(&keys);
    println!("server keys {:>20} keys", keys.len());

    let rooms = store
        .rooms_with_members_of(server_name)
        .await
        .map_err(|e| e.to_string())?;
    for (i, room_id) in rooms.iter().enumerate() {
        let Some(room) = store.get_room(room_id).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let events = store
            .room_events(room_id)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = events.iter().rev().find(|e| e.stream_ordering.is_some()) else {
            continue;
        };
        let state_before_last = match store
            .get_event(&last.event_id)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|row| row.state_group_before)
        {
            Some(group) => store
                .load_state_group(group)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(_, _, id)| id)
                .collect(),
            None => Vec::new(),
        };
        let mut extremities = Vec::new();
        let forward: Vec<String> =
            serde_json::from_str(&room.forward_extremities).unwrap_or_default();
        for id in forward.iter().filter(|id| **id != last.event_id) {
            let group = store
                .get_event(id)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|row| row.state_group_before);
            let Some(group) = group else { continue };
            extremities.push(Extremity {
                event_id: id.clone(),
                state_before: store
                    .load_state_group(group)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(_, _, id)| id)
                    .collect(),
            });
        }
        let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        manifest.rooms.insert(
            room_id.clone(),
            Counted {
                count: events.len() as u64,
                sha256: sha256_hex(ids.join("\n").as_bytes()),
            },
        );
        let file = RoomFile {
            room_id: room_id.clone(),
            room_version: room.room_version.clone(),
            events: events
                .iter()
                .map(|e| RoomFileEvent {
                    event_id: e.event_id.clone(),
                    timeline: e.stream_ordering.is_some(),
                    json: e.json.clone(),
                })
                .collect(),
            state_before_last,
            extremities,
        };
        write_file(
            &out.join("rooms").join(format!("{i:06}.json")),
            &serde_json::to_vec(&file).map_err(|e| e.to_string())?,
        )?;
        println!(
            "room {room_id} ({}/{}): {} events",
            i + 1,
            rooms.len(),
            events.len()
        );
    }

    let media_table = manifest.tables.get("media").map_or(0, |m| m.count);
    if media_table > 0 {
        let media_spec = TABLES
            .iter()
            .find(|t| t.name == "media")
            .ok_or("no media table")?;
        for line in store
            .export_rows(media_spec, code, server_name)
            .await
            .map_err(|e| e.to_string())?
        {
            let row: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            let Some(id) = row["media_id"].as_str() else {
                continue;
            };
            let source = crate::media::sharded_path(&config.server.data_dir, id);
            let bytes = std::fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
            write_file(&out.join("media").join(id), &bytes)?;
            manifest.media.insert(
                id.to_owned(),
                Counted {
                    count: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                },
            );
        }
        println!("media {:>26} files", manifest.media.len());
    }

    let key = std::fs::read(&territory.signing_key_file)
        .map_err(|e| format!("{}: {e}", territory.signing_key_file.display()))?;
    write_file(&out.join("signing.key"), &key)?;
    restrict(&out.join("signing.key"))?;
    manifest.signing_key_sha256 = sha256_hex(&key);
    write_file(
        &out.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?,
    )?;
    store.close().await;
    println!(
        "exported {code} ({server_name}) to {}: {} rooms, {} accounts. It holds the \
         territory's signing key: keep it secret.",
        out.display(),
        manifest.rooms.len(),
        manifest.tables.get("accounts").map_or(0, |c| c.count)
    );
    println!(
        "Next: `unitas territory import {}` on the new node, then the authority signs version \
         {} of {code} naming the new node.",
        out.display(),
        version + 1
    );
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> Result<(), String> {
    Ok(())
}

fn write_lines(path: &Path, lines: &[String]) -> Result<(), String> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

fn read_lines(path: &Path) -> Result<Vec<String>, String> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// An export read and checked: its manifest, each table's lines, the server keys' lines.
type Export = (Manifest, Vec<(TableSpec, Vec<String>)>, Vec<String>);

/// Reads the manifest and checks every file of the export against it.
fn read_export(dir: &Path) -> Result<Export, String> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .map_err(|e| format!("{}: {e}", dir.join("manifest.json").display()))?,
    )
    .map_err(|e| format!("manifest.json: {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!("unknown export format {:?}", manifest.format));
    }
    // The code names files (the key file) and the server name IDs: both must be well-formed.
    unitas_territory::TerritoryCode::parse(&manifest.code).map_err(|e| e.to_string())?;
    ruma::ServerName::parse(&manifest.server_name)
        .map_err(|e| format!("server name {:?}: {e}", manifest.server_name))?;
    let mut tables = Vec::new();
    for table in TABLES {
        let lines = read_lines(&dir.join("tables").join(format!("{}.jsonl", table.name)))?;
        let expected = manifest
            .tables
            .get(table.name)
            .ok_or_else(|| format!("manifest lacks table {}", table.name))?;
        if &counted_lines(&lines) != expected {
            return Err(format!(
                "tables/{}.jsonl does not match the manifest",
                table.name
            ));
        }
        // Every row must be the territory's own (an export cannot write another territory's
        // accounts or tokens).
        for line in &lines {
            let row: Value = serde_json::from_str(line)
                .map_err(|e| format!("tables/{}.jsonl: {e}", table.name))?;
            let owned = match table.owner {
                unitas_storage::Owner::Territory => row["territory"] == manifest.code.as_str(),
                unitas_storage::Owner::Code => row["code"] == manifest.code.as_str(),
                unitas_storage::Owner::ServerOf(column) => row[column]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&format!(":{}", manifest.server_name))),
            };
            if !owned {
                return Err(format!(
                    "tables/{}.jsonl holds a row that is not {}'s: {line}",
                    table.name, manifest.code
                ));
            }
        }
        tables.push((*table, lines));
    }
    let keys = read_lines(&dir.join("server_keys.jsonl"))?;
    if counted_lines(&keys) != manifest.server_keys {
        return Err("server_keys.jsonl does not match the manifest".into());
    }
    let key = std::fs::read(dir.join("signing.key")).map_err(|e| format!("signing.key: {e}"))?;
    if sha256_hex(&key) != manifest.signing_key_sha256 {
        return Err("signing.key does not match the manifest".into());
    }
    for (id, expected) in &manifest.media {
        // Media IDs name files: letters, digits, `-` and `_` only.
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("media ID {id:?} is not a media ID"));
        }
        let bytes =
            std::fs::read(dir.join("media").join(id)).map_err(|e| format!("media/{id}: {e}"))?;
        if sha256_hex(&bytes) != expected.sha256 {
            return Err(format!("media/{id} does not match the manifest"));
        }
    }
    Ok((manifest, tables, keys))
}

fn room_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rooms = dir.join("rooms");
    if !rooms.exists() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&rooms)
        .map_err(|e| format!("{}: {e}", rooms.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Puts the export's signing key at `path` (readable by the owner only); a key already there
/// must be the exported one.
fn install_key(dir: &Path, manifest: &Manifest, path: &Path) -> Result<(), String> {
    if path.exists() {
        let here = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if sha256_hex(&here) != manifest.signing_key_sha256 {
            return Err(format!(
                "{} holds another key than the export's",
                path.display()
            ));
        }
        return Ok(());
    }
    let exported =
        std::fs::read(dir.join("signing.key")).map_err(|e| format!("signing.key: {e}"))?;
    write_file(path, &exported)?;
    restrict(path)
}

/// `unitas territory import DIR`.
pub fn import(dir: &Path, config: Option<&Path>) -> Result<(), String> {
    let (manifest, tables, keys) = read_export(dir)?;
    println!(
        "export of {} ({}) checked against its manifest",
        manifest.code, manifest.server_name
    );
    let (config, file) = load_config(config)?;
    let config = match territory_of(&config, &manifest.code) {
        Ok(t) if t.server_name != manifest.server_name => {
            return Err(format!(
                "territory {} is configured here with server name {}, the export has {}",
                manifest.code, t.server_name, manifest.server_name
            ));
        }
        Ok(t) => {
            // Configured already: its key must be the exported one.
            install_key(dir, &manifest, &t.signing_key_file)?;
            config
        }
        Err(_) => {
            let file = file.ok_or(
                "no config file to add the territory to: give --config (or run `unitas init`)",
            )?;
            let key_file = config
                .server
                .data_dir
                .join("keys")
                .join(format!("{}.signing.key", manifest.code));
            install_key(dir, &manifest, &key_file)?;
            // A fresh node that lists no territory serves an implicit default one; the
            // imported territory takes its place.
            if config.territories.is_empty() {
                println!(
                    "the config lists no [[territory]]: {} replaces the implicit default territory",
                    manifest.code
                );
            }
            crate::cli::add_territory_to_config(
                &manifest.code,
                &manifest.server_name,
                None,
                &file,
                true,
            )?;
            load_config(Some(&file))?.0
        }
    };
    runtime()?.block_on(import_async(dir, &manifest, tables, keys, config))
}

async fn import_async(
    dir: &Path,
    manifest: &Manifest,
    tables: Vec<(TableSpec, Vec<String>)>,
    keys: Vec<String>,
    config: Config,
) -> Result<(), String> {
    // Rows first, in one transaction, before the node makes anything of its own.
    let store = open_store(&config).await?;
    let hosted: Vec<String> = config
        .resolved_territories()
        .into_iter()
        .map(|t| t.server_name)
        .collect();
    let foreign_keys: Vec<String> = keys
        .into_iter()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| {
                    v["server_name"]
                        .as_str()
                        .map(|s| !hosted.iter().any(|h| h == s))
                })
                .unwrap_or(false)
        })
        .collect();
    let mut all = tables;
    all.push((SERVER_KEYS, foreign_keys));
    let inserted = store.import_rows(&all).await.map_err(|e| e.to_string())?;
    for ((table, lines), added) in all.iter().zip(&inserted) {
        println!(
            "table {:<22} {:>8} rows, {:>8} new",
            table.name,
            lines.len(),
            added
        );
    }
    store.close().await;

    // Rooms and media through a private node on loopback (no DHT, nobody told about it).
    let mut private = config.clone();
    private.dht.listen.clear();
    private.server.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    private.server.federation_listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let node = crate::Node::start(private)
        .await
        .map_err(|e| e.to_string())?;
    let outcome = import_rooms(dir, &node.state).await;
    node.shutdown().await;
    outcome?;
    for id in manifest.media.keys() {
        let target = crate::media::sharded_path(&config.server.data_dir, id);
        if !target.exists() {
            let bytes = std::fs::read(dir.join("media").join(id)).map_err(|e| e.to_string())?;
            write_file(&target, &bytes)?;
        }
    }
    if !manifest.media.is_empty() {
        println!("media {:>26} files", manifest.media.len());
    }
    validate_async(manifest, &config).await?;
    println!(
        "imported {} ({}). Next: the authority signs version {} of {} naming this node, and \
         publishes it; start this node (`unitas run`).",
        manifest.code,
        manifest.server_name,
        manifest.record_version + 1,
        manifest.code
    );
    Ok(())
}

async fn import_rooms(dir: &Path, state: &crate::state::AppState) -> Result<(), String> {
    use unitas_federation::rooms::RoomVersion;
    let files = room_files(dir)?;
    for (i, path) in files.iter().enumerate() {
        let room: RoomFile = serde_json::from_slice(
            &std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let room_id = ruma::RoomId::parse(&room.room_id).map_err(|e| e.to_string())?;
        if state
            .rooms
            .room_version(&room_id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            println!(
                "room {} ({}/{}): here already",
                room.room_id,
                i + 1,
                files.len()
            );
            continue;
        }
        let version = RoomVersion::parse(&room.room_version).ok_or_else(|| {
            format!(
                "room {}: unknown version {}",
                room.room_id, room.room_version
            )
        })?;
        let objects = room
            .events
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(&e.json)
                    .map_err(|err| err.to_string())
                    .and_then(|v| {
                        unitas_federation::inbound::canonical_object(&v).map_err(|e| e.to_string())
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The same checks as any event received from a peer.
        let pdus = state
            .inbound
            .verify_many(objects, &version, &room_id)
            .await
            .map_err(|e| format!("room {}: {e}", room.room_id))?;
        let timeline: Vec<bool> = room.events.iter().map(|e| e.timeline).collect();
        let Some(last_index) = timeline.iter().rposition(|t| *t) else {
            continue;
        };
        let extremity_ids: Vec<&str> = room
            .extremities
            .iter()
            .map(|x| x.event_id.as_str())
            .collect();
        let by_id: std::collections::HashMap<String, unitas_federation::rooms::Pdu> = pdus
            .iter()
            .map(|p| (p.event_id.to_string(), p.clone()))
            .collect();
        let mut last = None;
        let mut state_events = Vec::new();
        let mut others = Vec::new();
        let mut history = Vec::new();
        for (index, pdu) in pdus.into_iter().enumerate() {
            if index == last_index {
                last = Some(pdu);
                continue;
            }
            let id = pdu.event_id.to_string();
            if room.state_before_last.contains(&id) {
                state_events.push(pdu.clone());
            } else if !extremity_ids.contains(&id.as_str()) {
                others.push(pdu.clone());
            }
            if timeline[index] {
                history.push(pdu);
            }
        }
        let last = last.ok_or("no last event")?;
        state
            .rooms
            .join_from_state(&version, last, state_events, others.clone())
            .await
            .map_err(|e| format!("room {}: {e}", room.room_id))?;
        // The other forward extremities with their state, so a child of any of them appends.
        for extremity in &room.extremities {
            let Some(pdu) = by_id.get(&extremity.event_id).cloned() else {
                continue;
            };
            let before: Vec<_> = extremity
                .state_before
                .iter()
                .filter_map(|id| by_id.get(id).cloned())
                .collect();
            state
                .rooms
                .store_gap(&version, pdu, before, others.clone())
                .await
                .map_err(|e| format!("room {}: extremity: {e}", room.room_id))?;
        }
        let count = history.len();
        if count > 0 {
            state
                .rooms
                .store_backfill(&version, &room_id, history, Vec::new())
                .await
                .map_err(|e| format!("room {}: history: {e}", room.room_id))?;
        }
        println!(
            "room {} ({}/{}): {} events",
            room.room_id,
            i + 1,
            files.len(),
            room.events.len()
        );
    }
    Ok(())
}

/// `unitas reports`: the newest reports from the node's database, a JSON object a line.
pub fn list_reports(limit: i64, config: Option<&Path>) -> Result<(), String> {
    use unitas_storage::Reports;
    let (config, _) = load_config(config)?;
    runtime()?.block_on(async {
        let store = open_store(&config).await?;
        let reports = store
            .list_reports(limit.max(1))
            .await
            .map_err(|e| e.to_string())?;
        store.close().await;
        for r in reports {
            println!(
                "{}",
                json!({
                    "id": r.id, "kind": r.kind, "reporter": r.reporter, "room_id": r.room_id,
                    "event_id": r.event_id, "user_id": r.user_id, "reason": r.reason,
                    "created_ts": r.created_ts,
                })
            );
        }
        Ok(())
    })
}

/// `unitas territory validate DIR`: what this node's database holds of the territory against
/// the export's manifest.
pub fn validate(dir: &Path, config: Option<&Path>) -> Result<(), String> {
    let (manifest, _, _) = read_export(dir)?;
    let (config, _) = load_config(config)?;
    runtime()?.block_on(validate_async(&manifest, &config))
}

async fn validate_async(manifest: &Manifest, config: &Config) -> Result<(), String> {
    let store = open_store(config).await?;
    let mut problems = Vec::new();
    for table in TABLES {
        let lines = store
            .export_rows(table, &manifest.code, &manifest.server_name)
            .await
            .map_err(|e| e.to_string())?;
        let here = counted_lines(&lines);
        let expected = manifest.tables.get(table.name);
        // The new node may add rows of its own later (new devices, keys); at import time the
        // tables hold exactly the export.
        if expected != Some(&here) {
            problems.push(format!(
                "table {}: {} rows here, {} exported{}",
                table.name,
                here.count,
                expected.map_or(0, |e| e.count),
                if expected.map(|e| e.count) == Some(here.count) {
                    " (same count, other content)"
                } else {
                    ""
                }
            ));
        }
    }
    for (room_id, expected) in &manifest.rooms {
        let events = store
            .room_events(room_id)
            .await
            .map_err(|e| e.to_string())?;
        let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        let here = Counted {
            count: events.len() as u64,
            sha256: sha256_hex(ids.join("\n").as_bytes()),
        };
        if &here != expected {
            problems.push(format!(
                "room {room_id}: {} events here, {} exported",
                here.count, expected.count
            ));
        }
    }
    for id in manifest.media.keys() {
        if !crate::media::sharded_path(&config.server.data_dir, id).exists() {
            problems.push(format!("media {id} missing"));
        }
    }
    store.close().await;
    if problems.is_empty() {
        println!(
            "validated: {} tables, {} rooms, {} media files match the export (counts and hashes)",
            manifest.tables.len(),
            manifest.rooms.len(),
            manifest.media.len()
        );
        Ok(())
    } else {
        Err(format!("validation failed:\n  {}", problems.join("\n  ")))
    }
}
