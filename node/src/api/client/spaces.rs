//! Spaces (spec: client-server API, "Spaces"): `/hierarchy` walks a space's `m.space.child`
//! events breadth first from the room asked for, over the rooms this node knows that the user
//! may see (joined, or with a public or world-readable room), each with its summary and its
//! children's stripped `m.space.child` events. A child this node does not know is asked of the
//! servers its `m.space.child` event names (federation `/hierarchy`); peers get the same walk's
//! first step from us (`/_matrix/federation/v1/hierarchy/{roomId}`) for rooms that are public or
//! world-readable or that one of their users is in.

use std::collections::{HashSet, VecDeque};

use axum::Json;
use axum::extract::State;
use ruma::OwnedRoomId;
use ruma::api::client::space::get_hierarchy;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::api::client::rooms::{current_state_events, membership};
use crate::api::ruma::Ruma;
use crate::state::AppState;

/// Rooms in one walk at most (a page is cut from them).
const MAX_ROOMS: usize = 1000;
const DEFAULT_LIMIT: usize = 50;

/// A child: its room ID and the servers to reach it through.
type Child = (OwnedRoomId, Vec<String>);

/// A room this node knows as the hierarchy shows it, and its children (in order); `None` when
/// the room is unknown here.
async fn local_summary(
    state: &AppState,
    room_id: &OwnedRoomId,
    suggested_only: bool,
) -> Result<Option<(Value, Vec<Child>)>, ApiError> {
    let Ok(events) = current_state_events(state, room_id).await else {
        return Ok(None);
    };
    let mut room = json!({
        "room_id": room_id, "num_joined_members": 0, "world_readable": false,
        "guest_can_join": false, "join_rule": "invite", "children_state": [],
    });
    let mut joined = 0u64;
    let mut children = Vec::new();
    let mut children_state = Vec::new();
    for event in &events {
        let content: Value = serde_json::from_str(event.content.get()).unwrap_or_default();
        match event.kind.to_string().as_str() {
            "m.room.member" if content["membership"] == "join" => joined += 1,
            "m.room.create" => {
                if let Some(kind) = content["type"].as_str() {
                    room["room_type"] = json!(kind);
                }
            }
            "m.room.name" => room["name"] = content["name"].clone(),
            "m.room.topic" => room["topic"] = content["topic"].clone(),
            "m.room.canonical_alias" => room["canonical_alias"] = content["alias"].clone(),
            "m.room.avatar" => room["avatar_url"] = content["url"].clone(),
            "m.room.join_rules" => room["join_rule"] = content["join_rule"].clone(),
            "m.room.history_visibility" => {
                room["world_readable"] = json!(content["history_visibility"] == "world_readable")
            }
            "m.room.guest_access" => {
                room["guest_can_join"] = json!(content["guest_access"] == "can_join")
            }
            "m.space.child" => {
                // A child counts while its content names servers to join through.
                let linked = content["via"].as_array().is_some_and(|v| !v.is_empty());
                let suggested = content["suggested"] == true;
                if let (true, Some(child)) = (
                    linked && (!suggested_only || suggested),
                    event
                        .state_key
                        .as_deref()
                        .and_then(|k| OwnedRoomId::try_from(k).ok()),
                ) {
                    let via = content["via"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(|s| s.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    children.push((child, via));
                    children_state.push(json!({
                        "type": "m.space.child",
                        "state_key": event.state_key,
                        "content": content,
                        "sender": event.sender,
                        "origin_server_ts": event.origin_server_ts,
                    }));
                }
            }
            _ => {}
        }
    }
    room["num_joined_members"] = json!(joined);
    room["children_state"] = json!(children_state);
    Ok(Some((room, children)))
}

/// Whether anyone may see a room's summary (public, or world-readable history).
fn open(room: &Value) -> bool {
    room["join_rule"] == "public" || room["world_readable"] == true
}

/// The children named by a summary's `children_state` (for rooms from other servers).
fn children_of(room: &Value) -> Vec<Child> {
    room["children_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let child = OwnedRoomId::try_from(e["state_key"].as_str()?).ok()?;
            let via = e["content"]["via"]
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            Some((child, via))
        })
        .collect()
}

/// A room as the user may see it: from this node when it knows the room, else from the first
/// of `via` that answers federation `/hierarchy` (what a peer shows is what it judged
/// accessible to us).
async fn summary(
    state: &AppState,
    room_id: &OwnedRoomId,
    via: &[String],
    user: &crate::api::ruma::ClientUser,
    suggested_only: bool,
) -> Result<Option<(Value, Vec<Child>)>, ApiError> {
    if let Some((room, children)) = local_summary(state, room_id, suggested_only).await? {
        let visible = open(&room)
            || membership(state, room_id, &user.user_id).await?.as_deref() == Some("join");
        return Ok(visible.then_some((room, children)));
    }
    let origin = user.territory.server_name().to_owned();
    for server in via.iter().take(3) {
        if state.territories.hosts(server) {
            continue;
        }
        let (Ok(origin), Ok(destination)) = (
            ruma::ServerName::parse(&origin),
            ruma::ServerName::parse(server),
        ) else {
            continue;
        };
        let path = format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
            unitas_federation::inbound::percent(room_id.as_str())
        );
        let call = state.federation.request(
            &origin,
            &user.territory.key,
            &destination,
            http::Method::GET,
            &path,
            None,
        );
        if let Ok(Ok(answer)) = tokio::time::timeout(std::time::Duration::from_secs(10), call).await
            && answer["room"]["room_id"] == room_id.as_str()
        {
            let room = answer["room"].clone();
            let children = children_of(&room);
            return Ok(Some((room, children)));
        }
    }
    Ok(None)
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`: a room of ours and its children as a peer
/// may see them (public or world-readable rooms, or rooms one of the peer's users is in).
pub async fn federation_hierarchy_route(
    State(state): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    peer: crate::api::peer::Peer,
) -> Result<Json<Value>, ApiError> {
    let room_id = OwnedRoomId::try_from(room_id.as_str())
        .map_err(|e| ApiError::invalid_param(format!("room ID: {e}")))?;
    let suggested_only = query.get("suggested_only").is_some_and(|v| v == "true");
    let accessible = |room_id: OwnedRoomId, room: Value| {
        let state = state.clone();
        let origin = peer.origin.to_string();
        async move {
            if open(&room) {
                return Ok::<bool, ApiError>(true);
            }
            Ok(state
                .rooms
                .joined_servers(&room_id)
                .await?
                .contains(&origin))
        }
    };
    let Some((room, children)) = local_summary(&state, &room_id, suggested_only).await? else {
        return Err(ApiError::not_found("Unknown room"));
    };
    if !accessible(room_id.clone(), room.clone()).await? {
        return Err(ApiError::not_found("Unknown room"));
    }
    let mut shown = Vec::new();
    let mut inaccessible = Vec::new();
    for (child, _) in children {
        if let Some((summary, _)) = local_summary(&state, &child, suggested_only).await? {
            if accessible(child.clone(), summary.clone()).await? {
                shown.push(summary);
            } else {
                inaccessible.push(child);
            }
        }
    }
    Ok(Json(json!({
        "room": room,
        "children": shown,
        "inaccessible_children": inaccessible,
    })))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`.
pub async fn hierarchy_route(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let b = &req.body;
    let offset = match &b.from {
        None => 0,
        Some(token) => token
            .strip_prefix('h')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_param(format!("Invalid from token {token:?}")))?,
    };
    let limit = b
        .limit
        .map(|l| usize::try_from(u64::from(l)).unwrap_or(DEFAULT_LIMIT))
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, DEFAULT_LIMIT);
    let max_depth = b.max_depth.map(u64::from).unwrap_or(u64::MAX);
    // Breadth first from the room asked for, each room once.
    let mut rooms = Vec::new();
    let mut seen = HashSet::new();
    let user = req.user()?.clone();
    let mut queue = VecDeque::from([(b.room_id.clone(), Vec::new(), 0u64)]);
    seen.insert(b.room_id.clone());
    while let Some((room_id, via, depth)) = queue.pop_front() {
        if rooms.len() >= MAX_ROOMS {
            break;
        }
        let Some((room, children)) =
            summary(&state, &room_id, &via, &user, b.suggested_only).await?
        else {
            if room_id == b.room_id {
                return Err(ApiError::forbidden("The room is not visible to you"));
            }
            continue;
        };
        rooms.push(room);
        if depth < max_depth {
            for (child, via) in children {
                if seen.insert(child.clone()) {
                    queue.push_back((child, via, depth + 1));
                }
            }
        }
    }
    let page: Vec<Value> = rooms.iter().skip(offset).take(limit).cloned().collect();
    let mut answer = json!({ "rooms": page });
    if offset + limit < rooms.len() {
        answer["next_batch"] = json!(format!("h{}", offset + limit));
    }
    Ok(Json(answer))
}
