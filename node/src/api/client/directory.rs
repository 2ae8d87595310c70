//! Room aliases, the room directory and the user directory (spec: client-server API, "Room
//! aliases", "Listing rooms", "User directory").

use axum::extract::State;
use axum::http::StatusCode;
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{
    get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
};
use ruma::api::client::room::{Visibility, aliases};
use ruma::api::client::user_directory::search_users;
use ruma::directory::{PublicRoomsChunk, PublicRoomsChunkInit};
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, UInt};
use serde_json::Value;
use unitas_storage::{ClientData, ClientExtras, StorageError};

use super::rooms::{current_state_events, require_joined};
use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::node::now_ms;
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

fn local_alias(state: &AppState, alias: &RoomAliasId) -> std::result::Result<(), ApiError> {
    if state.territories.hosts(alias.server_name().as_str()) {
        Ok(())
    } else {
        Err(ApiError::invalid_param(format!(
            "{alias} does not belong to a territory of this node"
        )))
    }
}

/// Resolves an alias of any server: a local one from the database, another server's through a
/// federation directory query (signed by `territory`). The room and servers to join it through.
pub async fn resolve_any_alias(
    state: &AppState,
    alias: &RoomAliasId,
    territory: &crate::state::HostedTerritory,
) -> std::result::Result<(OwnedRoomId, Vec<String>), ApiError> {
    if local_alias(state, alias).is_ok() {
        return Ok((resolve_alias(state, alias).await?, Vec::new()));
    }
    let origin =
        ruma::ServerName::parse(territory.server_name()).map_err(|e| ApiError::internal(&e))?;
    let answer = state
        .federation
        .request(
            &origin,
            &territory.key,
            alias.server_name(),
            axum::http::Method::GET,
            &format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                unitas_federation::inbound::percent(alias.as_str())
            ),
            None,
        )
        .await
        .map_err(|e| ApiError::not_found(format!("Room alias {alias} not found: {e}")))?;
    let room_id = answer
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or_else(|| ApiError::not_found(format!("Room alias {alias} not found")))?;
    let mut servers: Vec<String> = answer
        .get("servers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    servers.truncate(10);
    Ok((room_id, servers))
}

/// Resolves a local alias to its room.
pub async fn resolve_alias(
    state: &AppState,
    alias: &RoomAliasId,
) -> std::result::Result<OwnedRoomId, ApiError> {
    let (room, _) = state
        .store
        .get_alias(alias.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Room alias {alias} not found")))?;
    OwnedRoomId::try_from(room).map_err(|e| ApiError::internal(&e))
}

/// Creates an alias for a room (used by `/createRoom` too).
pub async fn add_alias(
    state: &AppState,
    alias: &RoomAliasId,
    room_id: &OwnedRoomId,
    creator: &str,
) -> std::result::Result<(), ApiError> {
    local_alias(state, alias)?;
    match state
        .store
        .create_alias(alias.as_str(), room_id.as_str(), creator, now_ms())
        .await
    {
        Ok(()) => Ok(()),
        Err(StorageError::Conflict { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "M_ROOM_IN_USE",
            "Room alias already exists",
        )),
        Err(err) => Err(err.into()),
    }
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`.
pub async fn create_alias_route(
    State(state): State<AppState>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let user = req.user()?.clone();
    if state
        .rooms
        .current_state(&req.body.room_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("Unknown room"));
    }
    add_alias(
        &state,
        &req.body.room_alias,
        &req.body.room_id,
        user.user_id.as_str(),
    )
    .await?;
    Ok(create_alias::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`.
pub async fn get_alias_route(
    State(state): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let territory = match &req.user {
        Some(user) => user.territory.clone(),
        None => req.territory.clone(),
    };
    let (room_id, mut servers) =
        resolve_any_alias(&state, &req.body.room_alias, &territory).await?;
    if servers.is_empty() {
        servers = crate::api::federation_rooms::servers_in_room(&state, &room_id).await?;
    }
    if servers.is_empty() {
        servers.push(req.body.room_alias.server_name().to_string());
    }
    let servers = servers
        .iter()
        .filter_map(|s| ruma::OwnedServerName::try_from(s.as_str()).ok())
        .collect();
    Ok(get_alias::v3::Response::new(room_id, servers).into())
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`: the creator may delete it.
pub async fn delete_alias_route(
    State(state): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let user = req.user()?.clone();
    let (_, creator) = state
        .store
        .get_alias(req.body.room_alias.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("Room alias not found"))?;
    if creator != user.user_id.as_str() {
        return Err(ApiError::forbidden(
            "Only the alias's creator may delete it",
        ));
    }
    state
        .store
        .delete_alias(req.body.room_alias.as_str())
        .await?;
    Ok(delete_alias::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`.
pub async fn get_room_aliases_route(
    State(state): State<AppState>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let list = state
        .store
        .list_aliases(req.body.room_id.as_str())
        .await?
        .into_iter()
        .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(list).into())
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`.
pub async fn get_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    if state
        .rooms
        .current_state(&req.body.room_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("Unknown room"));
    }
    let visibility = match state
        .store
        .get_room_visibility(req.body.room_id.as_str())
        .await?
        .as_str()
    {
        "public" => Visibility::Public,
        _ => Visibility::Private,
    };
    Ok(get_room_visibility::v3::Response::new(visibility).into())
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`: room members with power to change
/// the room's state may publish it.
pub async fn set_room_visibility_route(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let visibility = match req.body.visibility {
        Visibility::Public => "public",
        _ => "private",
    };
    state
        .store
        .set_room_visibility(req.body.room_id.as_str(), visibility)
        .await?;
    Ok(set_room_visibility::v3::Response::new().into())
}

/// A published room's directory entry.
async fn chunk(
    state: &AppState,
    room_id: &OwnedRoomId,
) -> std::result::Result<Option<PublicRoomsChunk>, ApiError> {
    let Ok(events) = current_state_events(state, room_id).await else {
        return Ok(None);
    };
    let mut joined = 0u64;
    let mut entry = PublicRoomsChunk::from(PublicRoomsChunkInit {
        num_joined_members: UInt::MIN,
        room_id: room_id.clone(),
        world_readable: false,
        guest_can_join: false,
    });
    for event in events {
        let content: Value = serde_json::from_str(event.content.get()).unwrap_or_default();
        match event.kind.to_string().as_str() {
            "m.room.member" if content["membership"] == "join" => joined += 1,
            "m.room.name" => entry.name = content["name"].as_str().map(str::to_owned),
            "m.room.topic" => entry.topic = content["topic"].as_str().map(str::to_owned),
            "m.room.canonical_alias" => {
                entry.canonical_alias = content["alias"]
                    .as_str()
                    .and_then(|a| OwnedRoomAliasId::try_from(a).ok())
            }
            "m.room.history_visibility" => {
                entry.world_readable = content["history_visibility"] == "world_readable"
            }
            "m.room.guest_access" => entry.guest_can_join = content["guest_access"] == "can_join",
            "m.room.avatar" => {
                entry.avatar_url = content["url"].as_str().map(ruma::OwnedMxcUri::from)
            }
            _ => {}
        }
    }
    entry.num_joined_members = UInt::new(joined).unwrap_or(UInt::MIN);
    Ok(Some(entry))
}

/// The published rooms matching `term`, from `since` (an offset), at most `limit`.
pub(crate) async fn public_rooms(
    state: &AppState,
    term: Option<&str>,
    since: Option<&str>,
    limit: Option<UInt>,
) -> std::result::Result<get_public_rooms_filtered::v3::Response, ApiError> {
    let term = term.map(str::to_lowercase);
    let mut all = Vec::new();
    for room in state.store.list_public_rooms().await? {
        let Ok(room_id) = OwnedRoomId::try_from(room) else {
            continue;
        };
        if let Some(entry) = chunk(state, &room_id).await? {
            let text = format!(
                "{} {} {}",
                entry.name.as_deref().unwrap_or(""),
                entry.topic.as_deref().unwrap_or(""),
                entry
                    .canonical_alias
                    .as_ref()
                    .map(|a| a.as_str())
                    .unwrap_or("")
            )
            .to_lowercase();
            if term.as_ref().is_none_or(|t| text.contains(t.as_str())) {
                all.push(entry);
            }
        }
    }
    // Most members first, then by room ID: a stable order for offsets.
    all.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then(a.room_id.cmp(&b.room_id))
    });
    let total = all.len();
    let offset: usize = since
        .and_then(|s| s.strip_prefix('o'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let limit = limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(100)
        .clamp(1, 500);
    let page: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.next_batch =
        (offset + page.len() < total).then(|| format!("o{}", offset + page.len()));
    response.prev_batch = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    response.total_room_count_estimate = UInt::new(total as u64);
    response.chunk = page;
    Ok(response)
}

/// `GET /_matrix/client/v3/publicRooms`.
pub async fn get_public_rooms_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let rooms = public_rooms(&state, None, req.body.since.as_deref(), req.body.limit).await?;
    let mut response = get_public_rooms::v3::Response::new(rooms.chunk);
    response.next_batch = rooms.next_batch;
    response.prev_batch = rooms.prev_batch;
    response.total_room_count_estimate = rooms.total_room_count_estimate;
    Ok(response.into())
}

/// `POST /_matrix/client/v3/publicRooms` (with a search filter).
pub async fn get_public_rooms_filtered_route(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = req.body;
    Ok(public_rooms(
        &state,
        body.filter.generic_search_term.as_deref(),
        body.since.as_deref(),
        body.limit,
    )
    .await?
    .into())
}

/// `POST /_matrix/client/v3/user_directory/search`: local users by ID or display name.
pub async fn search_users_route(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    req.user()?;
    let limit = i64::try_from(u64::from(req.body.limit))
        .unwrap_or(10)
        .clamp(1, 100);
    let rows = state
        .store
        .search_users(&req.body.search_term, limit + 1)
        .await?;
    let limited = rows.len() as i64 > limit;
    let results = rows
        .into_iter()
        .take(limit as usize)
        .filter_map(|(id, name, avatar)| {
            let mut user = search_users::v3::User::new(ruma::OwnedUserId::try_from(id).ok()?);
            user.display_name = name;
            user.avatar_url = avatar.map(ruma::OwnedMxcUri::from);
            Some(user)
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited).into())
}
