//! Spaces (spec: client-server API, "Spaces"): `/hierarchy` walks a space's `m.space.child`
//! events breadth first from the room asked for, over the rooms this node knows that the user
//! may see (joined, or with a public or world-readable room), each with its summary and its
//! children's stripped `m.space.child` events. Rooms only other servers know are left out (the
//! federation `/hierarchy` is not asked yet).

use std::collections::{HashSet, VecDeque};

use axum::Json;
use axum::extract::State;
use ruma::api::client::space::get_hierarchy;
use ruma::{OwnedRoomId, UserId};
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::api::client::rooms::{current_state_events, membership};
use crate::api::ruma::Ruma;
use crate::state::AppState;

/// Rooms in one walk at most (a page is cut from them).
const MAX_ROOMS: usize = 1000;
const DEFAULT_LIMIT: usize = 50;

/// A room as the hierarchy shows it, its children (room IDs, in order), and whether the user
/// may see it.
async fn summary(
    state: &AppState,
    room_id: &OwnedRoomId,
    user: &UserId,
    suggested_only: bool,
) -> Result<Option<(Value, Vec<OwnedRoomId>)>, ApiError> {
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
                    children.push(child);
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
    let visible = membership(state, room_id, user).await?.as_deref() == Some("join")
        || room["join_rule"] == "public"
        || room["world_readable"] == true;
    Ok(visible.then_some((room, children)))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`.
pub async fn hierarchy_route(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
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
    let mut queue = VecDeque::from([(b.room_id.clone(), 0u64)]);
    seen.insert(b.room_id.clone());
    while let Some((room_id, depth)) = queue.pop_front() {
        if rooms.len() >= MAX_ROOMS {
            break;
        }
        let Some((room, children)) = summary(&state, &room_id, &user, b.suggested_only).await?
        else {
            if room_id == b.room_id {
                return Err(ApiError::forbidden("The room is not visible to you"));
            }
            continue;
        };
        rooms.push(room);
        if depth < max_depth {
            for child in children {
                if seen.insert(child.clone()) {
                    queue.push_back((child, depth + 1));
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
