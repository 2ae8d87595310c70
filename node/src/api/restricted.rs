//! Restricted join rules (spec: client-server API "Restricted rooms"; room versions 8 and
//! later): a room whose join rule is `restricted` (or `knock_restricted`) lets a user join without
//! an invite when they are joined to one of the rooms its `allow` list names (a space, usually).
//! A user of the room with the power to invite vouches for the join by being named in the
//! event's `join_authorised_via_users_server`; their server signs the event too.
//!
//! Used by local joins and by `make_join`/`send_join` for other servers' users.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use unitas_federation::rooms::Pdu;

use crate::api::ApiError;
use crate::state::AppState;

/// The content of a state event of a room's current state (and the event).
pub async fn state_content(
    state: &AppState,
    room_id: &RoomId,
    kind: &str,
    key: &str,
) -> Result<Option<(Arc<Pdu>, Value)>, ApiError> {
    let Some(id) = state
        .rooms
        .current_state_event_id(room_id, kind, key)
        .await?
    else {
        return Ok(None);
    };
    let Some(pdu) = state.rooms.get_pdu(&id).await? else {
        return Ok(None);
    };
    let content = serde_json::from_str(pdu.content.get()).unwrap_or(Value::Null);
    Ok(Some((pdu, content)))
}

/// A user's membership event in a room's current state, its content and its stream position
/// (`None`: never a member here).
pub async fn member_event(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<(Arc<Pdu>, Value, i64)>, ApiError> {
    let Some((event, content)) =
        state_content(state, room_id, "m.room.member", user.as_str()).await?
    else {
        return Ok(None);
    };
    let position = unitas_storage::RoomEvents::get_event(&state.store, event.event_id.as_str())
        .await?
        .and_then(|r| r.stream_ordering)
        .unwrap_or(0);
    Ok(Some((event, content, position)))
}

/// A user's membership in a room's current state (`None`: never a member here).
pub async fn membership_of(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<String>, ApiError> {
    Ok(
        state_content(state, room_id, "m.room.member", user.as_str())
            .await?
            .and_then(|(_, c)| c["membership"].as_str().map(str::to_owned)),
    )
}

/// The room's power levels as its version reads them (room creators count as all-powerful
/// from version 12 on). `None` for an unknown room.
pub async fn power_levels(
    state: &AppState,
    room_id: &RoomId,
) -> Result<Option<RoomPowerLevels>, ApiError> {
    let Some(version) = state.rooms.room_version(room_id).await? else {
        return Ok(None);
    };
    let rules = &version.rules().authorization;
    let mut creators = Vec::new();
    if rules.explicitly_privilege_room_creators
        && let Some((create, content)) = state_content(state, room_id, "m.room.create", "").await?
    {
        creators.push(create.sender.clone());
        if let Some(extra) = content["additional_creators"].as_array() {
            creators.extend(
                extra
                    .iter()
                    .filter_map(|c| c.as_str())
                    .filter_map(|c| OwnedUserId::try_from(c).ok()),
            );
        }
    }
    let source = match state_content(state, room_id, "m.room.power_levels", "").await? {
        Some((_, content)) => {
            match serde_json::from_value::<RoomPowerLevelsEventContent>(content) {
                Ok(content) => RoomPowerLevelsSource::Original(content),
                Err(_) => RoomPowerLevelsSource::None,
            }
        }
        None => RoomPowerLevelsSource::None,
    };
    Ok(Some(RoomPowerLevels::new(source, rules, creators)))
}

/// Whether one of this node's users is joined to the room (so its state is kept current).
async fn has_local_member(state: &AppState, room_id: &RoomId) -> Result<bool, ApiError> {
    let Some((_, local)) = state.rooms.member_summary(room_id).await? else {
        return Ok(false);
    };
    for member in local {
        if membership_of(state, room_id, &member).await?.as_deref() == Some("join") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a join needs under the room's join rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAuthorisation {
    /// Nothing: the rule is not restricted, or the user is already invited or joined (the
    /// ordinary auth rules decide).
    NotNeeded,
    /// This local user, who may invite, vouches for the join.
    By(OwnedUserId),
}

/// Decides whether `user` may join `room_id` through its restricted join rule, and picks the
/// local user who vouches (one of `prefer_server` when there is one).
///
/// Errors: 403 `M_FORBIDDEN` when the user is in none of the allowed rooms this server knows;
/// 400 `M_UNABLE_TO_AUTHORISE_JOIN` when this server knows none of them (another resident
/// server may); 400 `M_UNABLE_TO_GRANT_JOIN` when no user here may invite.
pub async fn authorise_join(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    prefer_server: &str,
) -> Result<JoinAuthorisation, ApiError> {
    let Some(version) = state.rooms.room_version(room_id).await? else {
        return Ok(JoinAuthorisation::NotNeeded);
    };
    let Some((_, rules)) = state_content(state, room_id, "m.room.join_rules", "").await? else {
        return Ok(JoinAuthorisation::NotNeeded);
    };
    let authorization = &version.rules().authorization;
    let restricted = match rules["join_rule"].as_str() {
        Some("restricted") => authorization.restricted_join_rule,
        Some("knock_restricted") => authorization.knock_restricted_join_rule,
        _ => false,
    };
    if !restricted {
        return Ok(JoinAuthorisation::NotNeeded);
    }
    if matches!(
        membership_of(state, room_id, user).await?.as_deref(),
        Some("join" | "invite")
    ) {
        return Ok(JoinAuthorisation::NotNeeded);
    }
    let allowed_rooms: Vec<OwnedRoomId> = rules["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str())
        .filter_map(|r| OwnedRoomId::try_from(r).ok())
        .collect();
    let mut known_any = false;
    let mut allowed = false;
    for allowed_room in &allowed_rooms {
        // Only a room this node is still in tells the truth about its members: a copy kept
        // after every local member left no longer hears of bans.
        if !has_local_member(state, allowed_room).await? {
            continue;
        }
        known_any = true;
        if membership_of(state, allowed_room, user).await?.as_deref() == Some("join") {
            allowed = true;
            break;
        }
    }
    if !allowed {
        return Err(if known_any {
            ApiError::forbidden(
                "The join rule lets in members of certain rooms, and you are in none of them",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNABLE_TO_AUTHORISE_JOIN",
                "This server cannot tell whether you are in a room the join rule allows",
            )
        });
    }
    let power = power_levels(state, room_id).await?;
    let (_, local) = state
        .rooms
        .member_summary(room_id)
        .await?
        .unwrap_or_default();
    let mut candidates = Vec::new();
    for member in local {
        if membership_of(state, room_id, &member).await?.as_deref() != Some("join") {
            continue;
        }
        if power.as_ref().is_some_and(|p| p.user_can_invite(&member)) {
            candidates.push(member);
        }
    }
    candidates.sort_by_key(|m| (m.server_name().as_str() != prefer_server, m.to_string()));
    match candidates.into_iter().next() {
        Some(by) => Ok(JoinAuthorisation::By(by)),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNABLE_TO_GRANT_JOIN",
            "No user of this server in the room may invite; try another server of the room",
        )),
    }
}
