//! End-to-end encryption key relay: device identity keys, one-time and fallback keys, for our
//! users and, over federation, for other servers' users.
//!
//! ```text
//!  /keys/query, /keys/claim (client)          /user/keys/query, /user/keys/claim,
//!        |                                    /user/devices (peers)
//!        +-- our users: the store  <------------------+
//!        +-- other servers' users: one signed request per server, concurrently, each
//!            bounded by the client's timeout; a server that fails is listed in `failures`
//! ```
//!
//! Keys are stored and handed out as the clients uploaded them (signed JSON the server never
//! needs to read inside). An answer from another server is kept only for that server's users,
//! and a device's keys only when they name that user and device.

use std::collections::BTreeMap;
use std::time::Duration;

use ruma::ServerName;
use serde_json::{Map, Value, json};
use unitas_storage::{ClientData, DeviceInbox, DeviceKeys, Devices, ToDeviceMessage};

use crate::api::ApiError;
use crate::ephemeral::Mark;
use crate::state::{AppState, HostedTerritory};

/// Users (with the devices asked for; empty: all) of each server.
pub type Wanted<T> = BTreeMap<String, BTreeMap<String, T>>;

/// The server part of a user ID.
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, server)| server)
}

/// Whether `user_id` belongs to one of our territories.
pub fn is_local(state: &AppState, user_id: &str) -> bool {
    server_of(user_id).is_some_and(|server| state.territories.hosts(server))
}

/// A local user's device keys (`devices` empty: every device), each with the device's display
/// name in `unsigned.device_display_name`.
pub async fn local_device_keys(
    state: &AppState,
    user_id: &str,
    devices: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let names: BTreeMap<String, Option<String>> = state
        .store
        .list_devices(user_id)
        .await?
        .into_iter()
        .map(|d| (d.device_id, d.display_name))
        .collect();
    let mut out = Map::new();
    for (device_id, key_json) in state.store.list_device_keys(user_id).await? {
        if !devices.is_empty() && !devices.contains(&device_id) {
            continue;
        }
        let Ok(Value::Object(mut keys)) = serde_json::from_str::<Value>(&key_json) else {
            continue;
        };
        if let Some(Some(name)) = names.get(&device_id) {
            let unsigned = keys
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(unsigned) = unsigned {
                unsigned.insert("device_display_name".into(), name.clone().into());
            }
        }
        out.insert(device_id, Value::Object(keys));
    }
    Ok(out)
}

/// Takes the display name back out of keys from [`local_device_keys`] (peers get it beside
/// the keys, not inside them).
pub fn take_display_name(keys: &mut Value) -> Option<Value> {
    keys.get_mut("unsigned")
        .and_then(Value::as_object_mut)
        .and_then(|u| u.remove("device_display_name"))
}

/// Claims one key per (local user, device, algorithm): `{user: {device: {"alg:id": key}}}`.
pub async fn claim_local(
    state: &AppState,
    wanted: &Wanted<String>,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (user_id, devices) in wanted {
        let mut per_device = Map::new();
        for (device_id, algorithm) in devices {
            if let Some((key_id, key_json)) =
                state.store.claim_key(user_id, device_id, algorithm).await?
                && let Ok(key) = serde_json::from_str::<Value>(&key_json)
            {
                per_device.insert(
                    device_id.clone(),
                    json!({ format!("{algorithm}:{key_id}"): key }),
                );
            }
        }
        if !per_device.is_empty() {
            out.insert(user_id.clone(), Value::Object(per_device));
        }
    }
    Ok(out)
}

/// Splits `wanted` into our users and other servers' users, by server.
fn by_server<T: Clone>(
    state: &AppState,
    wanted: &Wanted<T>,
) -> (Wanted<T>, BTreeMap<String, Wanted<T>>) {
    let mut local = Wanted::new();
    let mut remote: BTreeMap<String, Wanted<T>> = BTreeMap::new();
    for (user_id, devices) in wanted {
        if is_local(state, user_id) {
            local.insert(user_id.clone(), devices.clone());
        } else if let Some(server) = server_of(user_id) {
            remote
                .entry(server.to_owned())
                .or_default()
                .insert(user_id.clone(), devices.clone());
        }
    }
    (local, remote)
}

/// One signed request per server, concurrently; `(server, answer or failure)`.
async fn ask_each(
    state: &AppState,
    via: &HostedTerritory,
    requests: Vec<(String, String, Value)>,
    timeout: Duration,
) -> Vec<(String, Result<Value, String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (server, path, body) in requests {
        let state = state.clone();
        let origin = via.server_name().to_owned();
        let key = std::sync::Arc::clone(&via.key);
        tasks.spawn(async move {
            let answer = async {
                let origin = ServerName::parse(&origin).map_err(|e| e.to_string())?;
                let destination = ServerName::parse(&server).map_err(|e| e.to_string())?;
                let call = state.federation.request(
                    &origin,
                    &key,
                    &destination,
                    http::Method::POST,
                    &path,
                    Some(&body),
                );
                match tokio::time::timeout(timeout, call).await {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                }
            }
            .await;
            (server, answer)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(pair) = done {
            out.push(pair);
        }
    }
    out
}

/// A server's answer for its own users only: `{user: {device: value}}` entries whose user is on
/// `server`, and (with `check`) whose value names that user and device.
fn own_users(server: &str, answer: Option<&Value>, check: bool) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(Value::Object(users)) = answer else {
        return out;
    };
    for (user_id, devices) in users {
        if server_of(user_id) != Some(server) {
            continue;
        }
        let Value::Object(devices) = devices else {
            continue;
        };
        let kept: Map<String, Value> = devices
            .iter()
            .filter(|(device_id, keys)| {
                !check
                    || (keys.get("user_id").and_then(Value::as_str) == Some(user_id.as_str())
                        && keys.get("device_id").and_then(Value::as_str)
                            == Some(device_id.as_str()))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.insert(user_id.clone(), Value::Object(kept));
    }
    out
}

/// A local user's cross-signing keys by type (`master`, `self_signing`, `user_signing`).
pub async fn cross_signing_keys(
    state: &AppState,
    user_id: &str,
) -> Result<BTreeMap<String, Value>, ApiError> {
    Ok(state
        .store
        .list_cross_signing_keys(user_id)
        .await?
        .into_iter()
        .filter_map(|(kind, json)| serde_json::from_str(&json).ok().map(|v| (kind, v)))
        .collect())
}

/// What `/keys/query` answers.
#[derive(Debug, Default)]
pub struct KeyQuery {
    /// user -> device -> keys.
    pub device_keys: Map<String, Value>,
    /// server -> error, for servers that did not answer.
    pub failures: Map<String, Value>,
    /// user -> master key.
    pub master_keys: Map<String, Value>,
    /// user -> self-signing key.
    pub self_signing_keys: Map<String, Value>,
    /// The requester's own user-signing key (nobody else's is shown).
    pub user_signing_keys: Map<String, Value>,
}

/// `/keys/query` for any users, asked by `requester`.
pub async fn query(
    state: &AppState,
    via: &HostedTerritory,
    requester: &str,
    wanted: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> Result<KeyQuery, ApiError> {
    let mut answer = KeyQuery::default();
    let as_map: Wanted<()> = wanted
        .iter()
        .map(|(user, devices)| {
            (
                user.clone(),
                devices.iter().map(|d| (d.clone(), ())).collect(),
            )
        })
        .collect();
    let (local, remote) = by_server(state, &as_map);
    for (user_id, devices) in &local {
        let devices: Vec<String> = devices.keys().cloned().collect();
        answer.device_keys.insert(
            user_id.clone(),
            Value::Object(local_device_keys(state, user_id, &devices).await?),
        );
        for (kind, key) in cross_signing_keys(state, user_id).await? {
            let target = match kind.as_str() {
                "master" => &mut answer.master_keys,
                "self_signing" => &mut answer.self_signing_keys,
                "user_signing" if user_id == requester => &mut answer.user_signing_keys,
                _ => continue,
            };
            target.insert(user_id.clone(), key);
        }
    }
    let requests = remote
        .into_iter()
        .map(|(server, users)| {
            let body: Map<String, Value> = users
                .into_iter()
                .map(|(user, devices)| (user, json!(devices.keys().collect::<Vec<_>>())))
                .collect();
            (
                server,
                "/_matrix/federation/v1/user/keys/query".to_owned(),
                json!({ "device_keys": body }),
            )
        })
        .collect();
    for (server, reply) in ask_each(state, via, requests, timeout).await {
        match reply {
            Ok(reply) => {
                answer
                    .device_keys
                    .extend(own_users(&server, reply.get("device_keys"), true));
                answer
                    .master_keys
                    .extend(own_users(&server, reply.get("master_keys"), false));
                answer.self_signing_keys.extend(own_users(
                    &server,
                    reply.get("self_signing_keys"),
                    false,
                ));
            }
            Err(reason) => {
                tracing::info!(%server, reason, "remote key query failed");
                answer.failures.insert(server, json!({"error": reason}));
            }
        }
    }
    Ok(answer)
}

/// `/keys/claim` for any users: `(one_time_keys, failures)`.
pub async fn claim(
    state: &AppState,
    via: &HostedTerritory,
    wanted: &Wanted<String>,
    timeout: Duration,
) -> Result<(Map<String, Value>, Map<String, Value>), ApiError> {
    let (local, remote) = by_server(state, wanted);
    let mut one_time_keys = claim_local(state, &local).await?;
    let requests = remote
        .into_iter()
        .map(|(server, users)| {
            (
                server,
                "/_matrix/federation/v1/user/keys/claim".to_owned(),
                json!({ "one_time_keys": users }),
            )
        })
        .collect();
    let mut failures = Map::new();
    for (server, answer) in ask_each(state, via, requests, timeout).await {
        match answer {
            Ok(answer) => {
                one_time_keys.extend(own_users(&server, answer.get("one_time_keys"), false));
            }
            Err(reason) => {
                tracing::info!(%server, reason, "remote key claim failed");
                failures.insert(server, json!({"error": reason}));
            }
        }
    }
    Ok((one_time_keys, failures))
}

/// The other servers that share a room with a local user (where their users would need to
/// hear of the user's device changes).
pub(crate) async fn servers_sharing_rooms(
    state: &AppState,
    user_id: &str,
) -> Result<Vec<String>, ApiError> {
    let Ok(user) = ruma::OwnedUserId::try_from(user_id) else {
        return Ok(Vec::new());
    };
    let mut servers = std::collections::BTreeSet::new();
    for room in state.store.list_membership_rooms(user_id).await? {
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else {
            continue;
        };
        if crate::api::client::rooms::membership(state, &room_id, &user)
            .await?
            .as_deref()
            != Some("join")
        {
            continue;
        }
        servers.extend(crate::api::federation_rooms::servers_in_room(state, &room_id).await?);
    }
    servers.retain(|s| !state.territories.hosts(s));
    Ok(servers.into_iter().collect())
}

/// Tells the servers sharing a room with a local user that one of the user's devices changed
/// (keys uploaded, renamed, deleted): an `m.device_list_update` EDU with the device list
/// version as `stream_id` and the version before it as `prev_id` (a server that missed an
/// update sees the gap and fetches `/user/devices`). `bump`: move the version on first (a change
/// the store did not count itself, such as a rename).
pub async fn device_changed(
    state: &AppState,
    user_id: &str,
    device_id: &str,
    bump: bool,
) -> Result<(), ApiError> {
    record_change(state, user_id).await?;
    let servers = servers_sharing_rooms(state, user_id).await?;
    let version = if bump {
        state.store.bump_device_list(user_id).await?
    } else {
        state.store.device_list_version(user_id).await?
    };
    if servers.is_empty() {
        return Ok(());
    }
    let mut content = json!({
        "user_id": user_id,
        "device_id": device_id,
        "stream_id": version,
        "prev_id": if version > 1 { vec![version - 1] } else { Vec::new() },
    });
    let mut keys = local_device_keys(state, user_id, &[device_id.to_owned()]).await?;
    match keys.remove(device_id) {
        Some(mut keys) => {
            if let Some(name) = take_display_name(&mut keys) {
                content["device_display_name"] = name;
            }
            content["keys"] = keys;
        }
        None if state.store.get_device(user_id, device_id).await?.is_none() => {
            content["deleted"] = true.into();
        }
        None => {}
    }
    send_about(state, user_id, &servers, "m.device_list_update", content).await
}

/// Sends a durable EDU about a local user, as the user's territory, to `servers`.
async fn send_about(
    state: &AppState,
    user_id: &str,
    servers: &[String],
    edu_type: &str,
    content: Value,
) -> Result<(), ApiError> {
    let origin = server_of(user_id).unwrap_or_default();
    state
        .sender
        .send_edu_durable(
            origin,
            servers,
            &json!({"edu_type": edu_type, "content": content}),
        )
        .await
        .map_err(|e| ApiError::internal(&e))
}

/// A local user's cross-signing keys or their signatures changed: our users sharing a room
/// see the user in `device_lists.changed`, and the servers sharing a room get
/// `m.signing_key_update` with the master and self-signing keys (durable).
pub async fn signing_keys_changed(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    record_change(state, user_id).await?;
    let servers = servers_sharing_rooms(state, user_id).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let keys = cross_signing_keys(state, user_id).await?;
    let mut content = json!({ "user_id": user_id });
    if let Some(master) = keys.get("master") {
        content["master_key"] = master.clone();
    }
    if let Some(self_signing) = keys.get("self_signing") {
        content["self_signing_key"] = self_signing.clone();
    }
    send_about(state, user_id, &servers, "m.signing_key_update", content).await
}

/// Records that a user's devices changed (our users' syncs list it in `device_lists.changed`
/// when they share a room with the user) and wakes syncing clients.
pub async fn record_change(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    let at = state.ephemeral.reserve();
    at.mark(Mark::DeviceLists);
    state.store.add_device_list_change(user_id, at.at()).await?;
    drop(at);
    Ok(())
}

/// Stores to-device messages for our users (`*` as the device: every device of the user) and
/// wakes syncing clients. `messages`: user -> device -> content. Unknown users and devices are
/// skipped.
pub async fn deliver_to_device(
    state: &AppState,
    sender: &str,
    event_type: &str,
    message_id: &str,
    messages: &Map<String, Value>,
) -> Result<(), ApiError> {
    let mut rows = Vec::new();
    // Held until the rows are written (dropping them publishes the positions).
    let mut reserved = Vec::new();
    for (user_id, devices) in messages {
        let Some(devices) = devices.as_object() else {
            continue;
        };
        if !is_local(state, user_id) {
            continue;
        }
        let known: Vec<String> = state
            .store
            .list_devices(user_id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        for (device, content) in devices {
            let targets: Vec<&String> = if device == "*" {
                known.iter().collect()
            } else {
                known.iter().filter(|d| *d == device).collect()
            };
            for device_id in targets {
                let at = state.ephemeral.reserve();
                at.mark(Mark::ToDevice(user_id.clone()));
                rows.push(ToDeviceMessage {
                    user_id: user_id.clone(),
                    device_id: device_id.clone(),
                    position: at.at(),
                    sender: sender.to_owned(),
                    event_type: event_type.to_owned(),
                    content: content.to_string(),
                    message_id: message_id.to_owned(),
                });
                reserved.push(at);
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    state.store.add_to_device(&rows).await?;
    drop(reserved);
    Ok(())
}

/// Sends to-device messages from a local user: ours are stored, other servers' go out as one
/// `m.direct_to_device` EDU per server, queued durably before the request is answered.
pub async fn send_to_device(
    state: &AppState,
    sender: &str,
    sender_device: &str,
    event_type: &str,
    txn_id: &str,
    messages: &Map<String, Value>,
) -> Result<(), ApiError> {
    let message_id = format!("{sender_device}:{txn_id}");
    deliver_to_device(state, sender, event_type, &message_id, messages).await?;
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user_id, devices) in messages {
        if is_local(state, user_id) {
            continue;
        }
        if let Some(server) = server_of(user_id) {
            remote
                .entry(server.to_owned())
                .or_default()
                .insert(user_id.clone(), devices.clone());
        }
    }
    let origin = server_of(sender).unwrap_or_default();
    // Unique per sender device and transaction (a retried request repeats it, so the peer can
    // drop the copy), and opaque to the peer.
    let id = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(message_id.as_bytes())[..16])
    };
    for (server, users) in remote {
        state
            .sender
            .send_edu_durable(
                origin,
                &[server],
                &json!({"edu_type": "m.direct_to_device", "content": {
                    "sender": sender, "type": event_type, "message_id": &id, "messages": users}}),
            )
            .await
            .map_err(|e| ApiError::internal(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::own_users;

    #[test]
    fn a_server_answers_only_for_its_own_users_and_their_devices() {
        let answer = json!({
            "@alice:b.test": {
                "GOOD": {"user_id": "@alice:b.test", "device_id": "GOOD", "keys": {}},
                "SWAPPED": {"user_id": "@alice:b.test", "device_id": "OTHER", "keys": {}},
                "FOREIGN": {"user_id": "@carol:c.test", "device_id": "FOREIGN", "keys": {}},
            },
            "@carol:c.test": {
                "X": {"user_id": "@carol:c.test", "device_id": "X", "keys": {}},
            },
            "not-a-map": 5,
        });
        let kept = own_users("b.test", Some(&answer), true);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["@alice:b.test"]);
        let devices = kept["@alice:b.test"].as_object().unwrap();
        assert_eq!(devices.keys().collect::<Vec<_>>(), ["GOOD"]);
        // Claims carry keys, not device descriptions: only the user's server is checked.
        let claims = json!({
            "@alice:b.test": {"GOOD": {"signed_curve25519:A": {"key": "k"}}},
            "@carol:c.test": {"X": {"signed_curve25519:B": {"key": "k"}}},
        });
        let kept = own_users("b.test", Some(&claims), false);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["@alice:b.test"]);
        assert!(own_users("b.test", None, true).is_empty());
    }
}
