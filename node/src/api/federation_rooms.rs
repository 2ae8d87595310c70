//! Room endpoints of the federation API: transactions, joins, and reading events and state.
//! Every one takes a verified [`Peer`]; none acts for a user.

use std::collections::{HashSet, VecDeque};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ruma::{EventId, OwnedEventId, RoomId, ServerName, UserId};
use serde_json::{Value, json};
use unitas_federation::inbound::{canonical_object, verify_pdu};
use unitas_federation::rooms::{AppendError, Pdu, Signer};
use unitas_storage::{Accounts, RemoteInvites, RoomEvents};

use super::ApiError;
use super::peer::Peer;
use crate::state::AppState;

/// Most events in an auth chain or state answer.
const MAX_ANSWER_EVENTS: usize = 100_000;

fn parse_room(room_id: &str) -> Result<&RoomId, ApiError> {
    <&RoomId>::try_from(room_id).map_err(|e| ApiError::invalid_param(format!("room ID: {e}")))
}

fn event_json(pdu: &Pdu) -> Result<Value, ApiError> {
    serde_json::from_str(pdu.federation_json()).map_err(|e| ApiError::internal(&e))
}

fn now_ms() -> i64 {
    crate::node::now_ms()
}

/// The servers with a joined member in the room's current state, sorted (kept in memory with
/// the room's state).
pub(crate) async fn servers_in_room(
    state: &AppState,
    room_id: &RoomId,
) -> Result<Vec<String>, ApiError> {
    Ok(state.rooms.joined_servers(room_id).await?)
}

/// Whether `server` has a joined member in the room's current state.
async fn server_in_room(
    state: &AppState,
    room_id: &RoomId,
    server: &ServerName,
) -> Result<bool, ApiError> {
    Ok(servers_in_room(state, room_id)
        .await?
        .iter()
        .any(|s| s == server.as_str()))
}

/// The room's server ACL must let the peer in.
async fn require_acl(state: &AppState, room_id: &RoomId, peer: &Peer) -> Result<(), ApiError> {
    if unitas_federation::inbound::acl_allows(&state.rooms, room_id, peer.origin.as_str()).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "The server ACL of {room_id} denies {}",
            peer.origin
        )))
    }
}

async fn require_in_room(state: &AppState, room_id: &RoomId, peer: &Peer) -> Result<(), ApiError> {
    require_acl(state, room_id, peer).await?;
    if server_in_room(state, room_id, &peer.origin).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} has no member in {room_id}",
            peer.origin
        )))
    }
}

/// Events as stored, `(event_id, JSON)`, straight from the database: answers of whole states
/// are copied out as they are, never parsed into events.
type Stored = Vec<(String, String)>;

/// The auth events an event names (only that field is read).
fn auth_refs(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Refs {
        #[serde(default)]
        auth_events: Vec<String>,
    }
    serde_json::from_str::<Refs>(json)
        .map(|r| r.auth_events)
        .unwrap_or_default()
}

/// The stored JSON of `ids` (those that are stored).
async fn load_stored(state: &AppState, ids: &[OwnedEventId]) -> Result<Stored, ApiError> {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok(state.store.get_event_jsons(&ids).await?)
}

/// The auth chain of `events` (their auth events, theirs, and so on), without `events`
/// themselves unless one authorises another; loaded a level at a time.
async fn auth_chain_of(state: &AppState, events: &Stored) -> Result<Stored, ApiError> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut chain = Vec::new();
    let mut level: Vec<String> = events
        .iter()
        .flat_map(|(_, json)| auth_refs(json))
        .collect();
    while !level.is_empty() && chain.len() < MAX_ANSWER_EVENTS {
        level.retain(|id| seen.insert(id.clone()));
        let found = state.store.get_event_jsons(&level).await?;
        level = found.iter().flat_map(|(_, json)| auth_refs(json)).collect();
        chain.extend(found);
    }
    chain.truncate(MAX_ANSWER_EVENTS);
    Ok(chain)
}

/// Stored events as a JSON array, copied verbatim.
fn raw_list(events: Stored) -> Result<Vec<Box<serde_json::value::RawValue>>, ApiError> {
    events
        .into_iter()
        .map(|(_, json)| {
            serde_json::value::RawValue::from_string(json).map_err(|e| ApiError::internal(&e))
        })
        .collect()
}

/// `PUT /_matrix/federation/v1/send/{txnId}`.
pub async fn send_transaction_route(
    State(state): State<AppState>,
    Path(txn_id): Path<String>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    // Each PDU stays raw text until it is read into its canonical form.
    let body = unitas_federation::inbound::TransactionBody::parse(&peer.body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_json(e.to_string())
        } else {
            ApiError::not_json(e.to_string())
        }
    })?;
    if body.origin.as_deref() != Some(peer.origin.as_str()) {
        return Err(ApiError::forbidden(
            "The transaction's origin is not the server that signed the request",
        ));
    }
    // To-device messages first: they carry the room keys of the encrypted events beside them,
    // and a client that syncs between the two would get a message it cannot decrypt yet.
    // The other EDUs (receipts, typing, ...) after the events they may name.
    let (to_device, others): (Vec<Value>, Vec<Value>) =
        body.edus.iter().cloned().partition(|edu| {
            edu.get("edu_type").and_then(Value::as_str) == Some("m.direct_to_device")
        });
    // (Only from a transaction within the spec's limits: the checks below refuse the others.)
    let within_limits =
        to_device.len() + others.len() <= unitas_federation::inbound::MAX_TRANSACTION_EDUS;
    if !to_device.is_empty() && within_limits {
        super::client::ephemeral::apply_edus(&state, &peer.origin, &to_device).await?;
    }
    let answer = state
        .inbound
        .handle_transaction(&peer.territory.local_server(), &peer.origin, &txn_id, &body)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string()))?;
    if !others.is_empty() {
        super::client::ephemeral::apply_edus(&state, &peer.origin, &others).await?;
    }
    Ok(Json(answer))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: an unsigned join for the peer's
/// user, placed on our current state.
pub async fn make_join_route(
    State(state): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    query: axum::extract::RawQuery,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let versions = requested_versions(query.0.as_deref().unwrap_or(""));
    let supported = if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    };
    make_membership(&state, &room_id, &user_id, &peer, "join", &supported).await
}

/// `make_join`/`make_leave`: an unsigned membership event of the peer's user, placed on our
/// current state, when the room's version is one the peer supports (empty: any).
async fn make_membership(
    state: &AppState,
    room_id: &str,
    user_id: &str,
    peer: &Peer,
    membership: &str,
    supported: &[String],
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(room_id)?;
    let user = <&UserId>::try_from(user_id)
        .map_err(|e| ApiError::invalid_param(format!("user ID: {e}")))?;
    if user.server_name() != peer.origin {
        return Err(ApiError::forbidden(
            "The user does not belong to the requesting server",
        ));
    }
    require_acl(state, room_id, peer).await?;
    let Some(version) = state.rooms.room_version(room_id).await? else {
        return Err(ApiError::not_found(format!(
            "Room {room_id} is not known here"
        )));
    };
    if !supported.is_empty() && !supported.iter().any(|v| v == version.id().as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("The room has version {}", version.id()),
        )
        .with_extra("room_version", version.id().as_str().into()));
    }
    let mut content = json!({"membership": membership});
    if membership == "join"
        && let crate::api::restricted::JoinAuthorisation::By(by) =
            crate::api::restricted::authorise_join(
                state,
                room_id,
                user,
                peer.territory.server_name(),
            )
            .await?
    {
        content["join_authorised_via_users_server"] = json!(by);
    }
    let t = &peer.territory;
    let (version, template) = state
        .rooms
        .membership_template(
            room_id,
            user,
            content,
            Signer {
                server_name: t.server_name(),
                key: &t.key,
            },
        )
        .await?;
    Ok(Json(json!({
        "room_version": version.id().as_str(),
        "event": template,
    })))
}

/// `send_join`/`send_leave`: the peer's signed membership event of its own user, verified,
/// checked and appended; the event ID, and for a restricted join the event with our signature
/// (we vouch for it).
async fn receive_membership(
    state: &AppState,
    room_id: &RoomId,
    event_id: &str,
    peer: &Peer,
    membership: &str,
) -> Result<(OwnedEventId, Option<Value>), ApiError> {
    let Some(version) = state.rooms.room_version(room_id).await? else {
        return Err(ApiError::not_found(format!(
            "Room {room_id} is not known here"
        )));
    };
    require_acl(state, room_id, peer).await?;
    let value: Value =
        serde_json::from_slice(&peer.body).map_err(|e| ApiError::not_json(e.to_string()))?;
    let mut object = canonical_object(&value).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let vouched = if membership == "join" {
        vouch_for_join(state, room_id, &value, &version, &mut object).await?
    } else {
        false
    };
    let signed = vouched.then(|| Value::from(ruma::CanonicalJsonValue::Object(object.clone())));
    let event = verify_pdu(state.inbound.key_ring(), object, &version, Some(room_id))
        .await
        .map_err(|e| ApiError::forbidden(e.to_string()))?;
    if event.event_id.as_str() != event_id {
        return Err(ApiError::invalid_param(
            "The event ID does not match the event",
        ));
    }
    let content: Value = serde_json::from_str(event.content.get()).unwrap_or_default();
    if event.kind.to_string() != "m.room.member"
        || content.get("membership").and_then(Value::as_str) != Some(membership)
        || event.state_key.as_deref() != Some(event.sender.as_str())
        || event.sender.server_name() != peer.origin
    {
        return Err(ApiError::invalid_param(format!(
            "Not a {membership} of a user of the requesting server"
        )));
    }
    let id = event.event_id.clone();
    match state.rooms.append_remote(event).await {
        Ok(_) => Ok((id, signed)),
        Err(AppendError::Event(err)) => Err(ApiError::forbidden(err.to_string())),
        Err(err) => Err(err.into()),
    }
}

/// A join naming one of our users in `join_authorised_via_users_server`: checks that the
/// joining user may join through the room's restricted rule (a member of an allowed room) and
/// that the named user may vouch (joined, allowed to invite), then adds our signature. Returns
/// whether it signed. A join naming another server's user is left to the auth rules.
async fn vouch_for_join(
    state: &AppState,
    room_id: &RoomId,
    value: &Value,
    version: &unitas_federation::rooms::RoomVersion,
    object: &mut ruma::CanonicalJsonObject,
) -> Result<bool, ApiError> {
    let Some(by) = value["content"]["join_authorised_via_users_server"].as_str() else {
        return Ok(false);
    };
    let by = <&UserId>::try_from(by).map_err(|_| {
        ApiError::invalid_param("join_authorised_via_users_server is not a user ID")
    })?;
    let Some(territory) = state.territories.by_server_name(by.server_name().as_str()) else {
        return Ok(false);
    };
    let joining = value["sender"]
        .as_str()
        .and_then(|u| <&UserId>::try_from(u).ok())
        .ok_or_else(|| ApiError::invalid_param("the join has no valid sender"))?;
    // The joining user must be let in by the rule (make_join checked it; check again here, a
    // peer may skip make_join).
    crate::api::restricted::authorise_join(state, room_id, joining, territory.server_name())
        .await?;
    let joined = crate::api::restricted::membership_of(state, room_id, by).await?;
    let may_invite = crate::api::restricted::power_levels(state, room_id)
        .await?
        .is_some_and(|p| p.user_can_invite(by));
    if joined.as_deref() != Some("join") || !may_invite {
        return Err(ApiError::forbidden(format!(
            "{by} cannot vouch for joins of this room"
        )));
    }
    territory
        .key
        .cosign_event(territory.server_name(), object, &version.rules().redaction)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(true)
}

/// The `ver` parameters of a query string (the room versions the joining server supports).
fn requested_versions(query: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Query of `send_join`.
#[derive(Debug, serde::Deserialize)]
pub struct SendJoinQuery {
    #[serde(default)]
    omit_members: bool,
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: the peer's signed join; we append
/// it and answer the state before it and its auth chain.
pub async fn send_join_route(
    State(state): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(query): Query<SendJoinQuery>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let started = std::time::Instant::now();
    let room_id = parse_room(&room_id)?;
    let (join_id, signed) = receive_membership(&state, room_id, &event_id, &peer, "join").await?;
    let appended = started.elapsed();
    let before = state
        .rooms
        .state_before(&join_id)
        .await?
        .ok_or_else(|| ApiError::forbidden("The join was not accepted into the room"))?;
    let ids: Vec<OwnedEventId> = before
        .iter()
        .filter(|((kind, _), _)| !(query.omit_members && kind == "m.room.member"))
        .map(|(_, id)| id.clone())
        .collect();
    let state_events = load_stored(&state, &ids).await?;
    let chain = auth_chain_of(&state, &state_events).await?;
    let servers = servers_in_room(&state, room_id).await?;
    tracing::debug!(
        %room_id, origin = %peer.origin, events = state_events.len(), chain = chain.len(),
        append_ms = appended.as_millis(),
        gather_ms = (started.elapsed() - appended).as_millis(),
        "send_join answered"
    );
    let mut answer = json!({
        "origin": peer.territory.server_name(),
        "state": raw_list(state_events)?,
        "auth_chain": raw_list(chain)?,
        "members_omitted": query.omit_members,
        "servers_in_room": servers,
    });
    if let Some(signed) = signed {
        answer["event"] = signed;
    }
    Ok(Json(answer))
}

/// `GET /_matrix/federation/v1/event/{eventId}`.
pub async fn get_event_route(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let event_id = <&EventId>::try_from(event_id.as_str())
        .map_err(|e| ApiError::invalid_param(format!("event ID: {e}")))?;
    let pdu = state
        .rooms
        .get_pdu(event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    require_in_room(&state, &pdu.room_id, &peer).await?;
    Ok(Json(json!({
        "origin": peer.territory.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": [event_json(&pdu)?],
    })))
}

/// Body of `get_missing_events`.
#[derive(Debug, serde::Deserialize)]
pub struct MissingEvents {
    earliest_events: Vec<OwnedEventId>,
    latest_events: Vec<OwnedEventId>,
    #[serde(default = "default_missing_limit")]
    limit: usize,
    #[serde(default)]
    min_depth: u64,
}

fn default_missing_limit() -> usize {
    10
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: walks back from `latest_events`
/// through `prev_events`, stopping at `earliest_events`, at most `limit` (<= 100) events.
pub async fn get_missing_events_route(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(&room_id)?;
    require_in_room(&state, room_id, &peer).await?;
    let request: MissingEvents =
        serde_json::from_slice(&peer.body).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let limit = request.limit.min(100);
    let stop: HashSet<OwnedEventId> = request.earliest_events.into_iter().collect();
    let mut seen: HashSet<OwnedEventId> = request.latest_events.iter().cloned().collect();
    let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
    for id in &request.latest_events {
        if let Some(pdu) = state.rooms.get_pdu(id).await? {
            queue.extend(pdu.prev_events.iter().cloned());
        }
    }
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        if found.len() >= limit {
            break;
        }
        if stop.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        let Some(pdu) = state.rooms.get_pdu(&id).await? else {
            continue;
        };
        if pdu.room_id != room_id || pdu.depth < request.min_depth {
            continue;
        }
        queue.extend(pdu.prev_events.iter().cloned());
        found.push(pdu);
    }
    found.sort_by_key(|p| p.depth);
    let events: Vec<Value> = found
        .iter()
        .map(|p| event_json(p))
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "events": events })))
}

/// Query of `state_ids`.
#[derive(Debug, serde::Deserialize)]
pub struct StateQuery {
    event_id: OwnedEventId,
}

/// The IDs of the state before an event of the room, for a peer in the room.
async fn state_ids_before(
    state: &AppState,
    room_id: &str,
    event_id: &EventId,
    peer: &Peer,
) -> Result<Vec<OwnedEventId>, ApiError> {
    let room_id = parse_room(room_id)?;
    require_in_room(state, room_id, peer).await?;
    let pdu = state
        .rooms
        .get_pdu(event_id)
        .await?
        .filter(|p| p.room_id == room_id)
        .ok_or_else(|| ApiError::not_found("Event not found in this room"))?;
    let before = state
        .rooms
        .state_before(&pdu.event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("No state is known at that event"))?;
    Ok(before.values().cloned().collect())
}

/// The state before an event of the room (IDs, then the stored events) and its auth chain,
/// for a peer in the room: what `/state` and `/state_ids` answer.
async fn state_with_chain(
    state: &AppState,
    room_id: &str,
    event_id: &EventId,
    peer: &Peer,
) -> Result<(Vec<OwnedEventId>, Stored, Stored), ApiError> {
    let ids = state_ids_before(state, room_id, event_id, peer).await?;
    let events = load_stored(state, &ids).await?;
    let chain = auth_chain_of(state, &events).await?;
    Ok((ids, events, chain))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`: the state before an event and
/// its auth chain, as IDs.
pub async fn get_state_ids_route(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    Query(query): Query<StateQuery>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let (ids, _, chain) = state_with_chain(&state, &room_id, &query.event_id, &peer).await?;
    Ok(Json(json!({
        "pdu_ids": ids,
        "auth_chain_ids": chain.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
    })))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`: the state before an event and its
/// auth chain, as events.
pub async fn get_state_route(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    Query(query): Query<StateQuery>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let (_, events, chain) = state_with_chain(&state, &room_id, &query.event_id, &peer).await?;
    Ok(Json(
        json!({ "pdus": raw_list(events)?, "auth_chain": raw_list(chain)? }),
    ))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=`: events before the given ones,
/// newest first, walking `prev_events` (the given events included).
pub async fn backfill_route(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    query: axum::extract::RawQuery,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(&room_id)?;
    require_in_room(&state, room_id, &peer).await?;
    let mut from = Vec::new();
    let mut limit = 10usize;
    for (key, value) in url::form_urlencoded::parse(query.0.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "v" => from.push(
                OwnedEventId::try_from(value.as_ref())
                    .map_err(|e| ApiError::invalid_param(format!("v: {e}")))?,
            ),
            "limit" => {
                limit = value
                    .parse()
                    .map_err(|_| ApiError::invalid_param("limit must be a number"))?;
            }
            _ => {}
        }
    }
    let limit = limit.clamp(1, 100);
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut queue: VecDeque<OwnedEventId> = from.into_iter().collect();
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        if found.len() >= limit {
            break;
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(pdu) = state.rooms.get_pdu(&id).await? else {
            continue;
        };
        if pdu.room_id != room_id {
            continue;
        }
        queue.extend(pdu.prev_events.iter().cloned());
        found.push(pdu);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.depth));
    let pdus: Vec<Value> = found
        .iter()
        .map(|p| event_json(p))
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({
        "origin": peer.territory.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    })))
}

/// Query of `/query/directory`.
#[derive(Debug, serde::Deserialize)]
pub struct DirectoryQuery {
    room_alias: String,
}

/// `GET /_matrix/federation/v1/query/directory?room_alias=`: a local alias's room and the servers
/// in it.
pub async fn query_directory_route(
    State(state): State<AppState>,
    Query(query): Query<DirectoryQuery>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let alias = <&ruma::RoomAliasId>::try_from(query.room_alias.as_str())
        .map_err(|e| ApiError::invalid_param(format!("room_alias: {e}")))?;
    if alias.server_name() != peer.territory.server_name() {
        return Err(ApiError::not_found(
            "The alias does not belong to this server",
        ));
    }
    let room_id = super::client::directory::resolve_alias(&state, alias).await?;
    let mut servers = servers_in_room(&state, &room_id).await?;
    // The alias's own server first: it is surely in the room when anyone is.
    servers.sort_by_key(|s| s != peer.territory.server_name());
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// `GET|POST /_matrix/federation/v1/publicRooms`: our room directory for other servers.
pub async fn public_rooms_route(
    State(state): State<AppState>,
    query: axum::extract::RawQuery,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let mut since = None;
    let mut limit = None;
    let mut term = None;
    for (key, value) in url::form_urlencoded::parse(query.0.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "since" => since = Some(value.into_owned()),
            "limit" => limit = value.parse::<u32>().ok(),
            _ => {}
        }
    }
    if !peer.body.is_empty() {
        let body: Value =
            serde_json::from_slice(&peer.body).map_err(|e| ApiError::not_json(e.to_string()))?;
        if let Some(s) = body.get("since").and_then(Value::as_str) {
            since = Some(s.to_owned());
        }
        if let Some(l) = body.get("limit").and_then(Value::as_u64) {
            limit = u32::try_from(l).ok();
        }
        term = body
            .pointer("/filter/generic_search_term")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    let rooms = super::client::directory::public_rooms(
        &state,
        term.as_deref(),
        since.as_deref(),
        limit.map(ruma::UInt::from),
    )
    .await?;
    let mut answer = json!({
        "chunk": rooms.chunk,
        "total_room_count_estimate": rooms.total_room_count_estimate,
    });
    if let Some(next) = rooms.next_batch {
        answer["next_batch"] = next.into();
    }
    if let Some(prev) = rooms.prev_batch {
        answer["prev_batch"] = prev.into();
    }
    Ok(Json(answer))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites one of our
/// users; we countersign. In a room we are in, the invite is appended like any event; otherwise
/// it waits for the user (their sync shows it, with the stripped state the inviter sent).
pub async fn invite_route(
    State(state): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(&room_id)?;
    let body: Value =
        serde_json::from_slice(&peer.body).map_err(|e| ApiError::not_json(e.to_string()))?;
    let version_id = body
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1");
    let version = unitas_federation::rooms::RoomVersion::parse(version_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Room version {version_id} is not supported here"),
        )
        .with_extra("room_version", version_id.into())
    })?;
    let event = body
        .get("event")
        .ok_or_else(|| ApiError::bad_json("event is missing"))?;
    let (pdu, signed) = state
        .inbound
        .countersign_invite(
            &peer.territory.local_server(),
            &peer.origin,
            room_id,
            &event_id,
            &version,
            event,
        )
        .await
        .map_err(|e| ApiError::forbidden(e.to_string()))?;
    let invitee = pdu.state_key.clone().unwrap_or_default();
    if state.store.get_account(&invitee).await?.is_none() {
        return Err(ApiError::not_found("No such user here"));
    }
    if state.rooms.room_version(room_id).await?.is_some() {
        require_acl(&state, room_id, &peer).await?;
        match state.rooms.append_remote(pdu).await {
            Ok(_) => {}
            Err(AppendError::Event(err)) => return Err(ApiError::forbidden(err.to_string())),
            Err(err) => return Err(err.into()),
        }
    } else {
        let mut stripped: Vec<Value> = body
            .get("invite_room_state")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        stripped.retain(|e| e.get("type").is_some_and(Value::is_string));
        stripped.truncate(50);
        let client_view = super::client::rooms::client_event(&pdu);
        stripped.push(json!({"type": "m.room.member", "state_key": invitee,
            "sender": client_view["sender"], "content": client_view["content"]}));
        let position = state.ephemeral.reserve();
        position.mark(crate::ephemeral::Mark::RemoteInvites(invitee.clone()));
        state
            .store
            .store_remote_invite(&unitas_storage::RemoteInvite {
                user_id: invitee.clone(),
                room_id: room_id.to_string(),
                event_json: serde_json::to_string(&signed).map_err(|e| ApiError::internal(&e))?,
                invite_state: serde_json::to_string(&stripped)
                    .map_err(|e| ApiError::internal(&e))?,
                via: peer.origin.to_string(),
                position: position.at(),
                membership: "invite".into(),
            })
            .await?;
        drop(position);
    }
    Ok(Json(json!({ "event": signed })))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`.
pub async fn make_leave_route(
    State(state): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    make_membership(&state, &room_id, &user_id, &peer, "leave", &[]).await
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: the peer's signed leave (a user
/// declining our invite, or leaving).
pub async fn send_leave_route(
    State(state): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(&room_id)?;
    receive_membership(&state, room_id, &event_id, &peer, "leave").await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`.
pub async fn make_knock_route(
    State(state): State<AppState>,
    Path((room_id, user_id)): Path<(String, String)>,
    query: axum::extract::RawQuery,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let versions = requested_versions(query.0.as_deref().unwrap_or(""));
    make_membership(&state, &room_id, &user_id, &peer, "knock", &versions).await
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: the peer's signed knock; the
/// answer is what a knocker may see of the room.
pub async fn send_knock_route(
    State(state): State<AppState>,
    Path((room_id, event_id)): Path<(String, String)>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = parse_room(&room_id)?;
    let (knock_id, _) = receive_membership(&state, room_id, &event_id, &peer, "knock").await?;
    let knock = state
        .rooms
        .get_pdu(&knock_id)
        .await?
        .ok_or_else(|| ApiError::not_found("The knock was not stored"))?;
    let stripped = super::client::rooms::stripped_state(&state, room_id, &knock.sender).await?;
    Ok(Json(json!({ "knock_room_state": stripped })))
}
