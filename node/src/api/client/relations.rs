//! Relations and threads (spec: client-server API, "Relationships", "Threading"):
//! `/relations/{eventId}[/{relType}[/{eventType}]]` lists the events relating to an event,
//! newest first unless `dir=f`, a page at a time; `/threads` lists a room's threads, most
//! recently active first, each root with its thread summary bundled
//! (`unsigned.m.relations.m.thread`: latest event, count, whether the user took part).

use axum::Json;
use axum::extract::State;
use ruma::api::Direction;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type,
    get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::threads::get_threads;
use ruma::{EventId, RoomId, UInt, UserId};
use serde_json::{Value, json};
use unitas_storage::{RelationQuery, Relations};

use crate::api::ApiError;
use crate::api::client::rooms::{membership, visible_event};
use crate::api::ruma::Ruma;
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

fn limit_of(limit: Option<UInt>) -> i64 {
    limit
        .map(|l| i64::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT)
}

fn position_of(token: Option<&str>, prefix: char) -> Result<Option<i64>, ApiError> {
    token
        .map(|t| {
            t.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| ApiError::invalid_param(format!("Invalid pagination token {t:?}")))
        })
        .transpose()
}

/// The room must be one the user is joined to (`404 M_NOT_FOUND` otherwise: nothing shows).
async fn readable(state: &AppState, room_id: &RoomId, user: &UserId) -> Result<(), ApiError> {
    match membership(state, room_id, user).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(ApiError::not_found("Unknown room or not joined")),
    }
}

/// An event as clients see it (redacted when it was redacted).
async fn event_json(state: &AppState, id: &str) -> Result<Option<Value>, ApiError> {
    let Ok(event_id) = ruma::OwnedEventId::try_from(id) else {
        return Ok(None);
    };
    let Some(pdu) = state.rooms.get_pdu(&event_id).await? else {
        return Ok(None);
    };
    let redacted_by = unitas_storage::RoomEvents::get_event(&state.store, id)
        .await?
        .and_then(|row| row.redacted_by);
    Ok(Some(
        visible_event(state, &pdu, redacted_by.as_deref()).await?,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn relations(
    state: &AppState,
    user: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    dir: Direction,
    limit: Option<UInt>,
) -> Result<Json<Value>, ApiError> {
    readable(state, room_id, user).await?;
    let target = state
        .rooms
        .get_pdu(event_id)
        .await?
        .filter(|p| p.room_id == room_id)
        .ok_or_else(|| ApiError::not_found("Unknown event"))?;
    let limit = limit_of(limit);
    let rows = state
        .store
        .list_relations(RelationQuery {
            room_id: room_id.as_str(),
            target: target.event_id.as_str(),
            rel_type,
            event_type,
            from: position_of(from, 'r')?,
            forward: dir == Direction::Forward,
            limit,
        })
        .await?;
    let mut chunk = Vec::new();
    for (id, _) in &rows {
        if let Some(event) = event_json(state, id).await? {
            chunk.push(event);
        }
    }
    let mut answer = json!({ "chunk": chunk });
    if i64::try_from(rows.len()).unwrap_or(0) == limit
        && let Some((_, last)) = rows.last()
    {
        answer["next_batch"] = json!(format!("r{last}"));
    }
    Ok(Json(answer))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`.
pub async fn relations_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let b = &req.body;
    relations(
        &state,
        &user,
        &b.room_id,
        &b.event_id,
        None,
        None,
        b.from.as_deref(),
        b.dir,
        b.limit,
    )
    .await
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`.
pub async fn relations_by_type_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let b = &req.body;
    let rel_type = b.rel_type.to_string();
    relations(
        &state,
        &user,
        &b.room_id,
        &b.event_id,
        Some(&rel_type),
        None,
        b.from.as_deref(),
        b.dir,
        b.limit,
    )
    .await
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`.
pub async fn relations_by_type_and_event_type_route(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let b = &req.body;
    let rel_type = b.rel_type.to_string();
    let event_type = b.event_type.to_string();
    relations(
        &state,
        &user,
        &b.room_id,
        &b.event_id,
        Some(&rel_type),
        Some(&event_type),
        b.from.as_deref(),
        b.dir,
        b.limit,
    )
    .await
}

/// [`bundle`] for many events, with one query to find the few that have relations.
pub async fn bundle_all(
    state: &AppState,
    events: Vec<Value>,
    user: &UserId,
) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<String> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let related = state.store.related_targets(&ids).await?;
    if related.is_empty() {
        return Ok(events);
    }
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let has = event["event_id"]
            .as_str()
            .is_some_and(|id| related.iter().any(|r| r == id));
        out.push(if has {
            bundle(state, event, user).await?
        } else {
            event
        });
    }
    Ok(out)
}

/// An event with its relations bundled as clients expect them in `unsigned.m.relations`: the
/// thread summary (`m.thread`), the latest edit (`m.replace`) and the references
/// (`m.reference`, up to 50 event IDs).
pub async fn bundle(state: &AppState, event: Value, user: &UserId) -> Result<Value, ApiError> {
    let mut event = with_thread_summary(state, event, user).await?;
    let (Some(id), Some(room), Some(sender)) = (
        event["event_id"].as_str().map(str::to_owned),
        event["room_id"].as_str().map(str::to_owned),
        event["sender"].as_str().map(str::to_owned),
    ) else {
        return Ok(event);
    };
    let query = |rel_type, limit| RelationQuery {
        room_id: &room,
        target: &id,
        rel_type: Some(rel_type),
        event_type: None,
        from: None,
        forward: false,
        limit,
    };
    // Only the sender's own edits count (anyone may send an m.replace).
    let mut edit = Vec::new();
    for (edit_id, position) in state.store.list_relations(query("m.replace", 20)).await? {
        if event_json(state, &edit_id)
            .await?
            .is_some_and(|e| e["sender"] == sender.as_str())
        {
            edit.push((edit_id, position));
            break;
        }
    }
    let references = state.store.list_relations(query("m.reference", 50)).await?;
    if edit.is_empty() && references.is_empty() {
        return Ok(event);
    }
    if !event["unsigned"].is_object() {
        event["unsigned"] = json!({});
    }
    if let Some((edit_id, _)) = edit.first()
        && let Some(edit) = event_json(state, edit_id).await?
    {
        event["unsigned"]["m.relations"]["m.replace"] = edit;
    }
    if !references.is_empty() {
        let chunk: Vec<Value> = references
            .iter()
            .map(|(id, _)| json!({ "event_id": id }))
            .collect();
        event["unsigned"]["m.relations"]["m.reference"] = json!({ "chunk": chunk });
    }
    Ok(event)
}

/// A thread root as clients get it: the event with its thread summary bundled.
pub async fn with_thread_summary(
    state: &AppState,
    mut root: Value,
    user: &UserId,
) -> Result<Value, ApiError> {
    let (Some(id), Some(room)) = (
        root["event_id"].as_str().map(str::to_owned),
        root["room_id"].as_str().map(str::to_owned),
    ) else {
        return Ok(root);
    };
    let (count, latest, participated) = state
        .store
        .thread_summary(&room, &id, user.as_str())
        .await?;
    if count == 0 {
        return Ok(root);
    }
    let latest = match latest {
        Some(latest) => event_json(state, &latest).await?,
        None => None,
    };
    if !root["unsigned"].is_object() {
        root["unsigned"] = json!({});
    }
    root["unsigned"]["m.relations"]["m.thread"] = json!({
        "latest_event": latest,
        "count": count,
        "current_user_participated": participated,
    });
    Ok(root)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`.
pub async fn threads_route(
    State(state): State<AppState>,
    req: Ruma<get_threads::v1::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let b = &req.body;
    readable(&state, &b.room_id, &user).await?;
    let limit = limit_of(b.limit);
    let participant =
        (b.include == get_threads::v1::IncludeThreads::Participated).then(|| user.as_str());
    let threads = state
        .store
        .list_threads(
            b.room_id.as_str(),
            participant,
            position_of(b.from.as_deref(), 't')?,
            limit,
        )
        .await?;
    let mut chunk = Vec::new();
    for thread in &threads {
        if let Some(root) = event_json(&state, &thread.root).await? {
            chunk.push(with_thread_summary(&state, root, &user).await?);
        }
    }
    let mut answer = json!({ "chunk": chunk });
    if i64::try_from(threads.len()).unwrap_or(0) == limit
        && let Some(last) = threads.last()
    {
        answer["next_batch"] = json!(format!("t{}", last.latest));
    }
    Ok(Json(answer))
}
