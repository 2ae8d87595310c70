//! Rooms for clients: create, membership, send, state, history (spec: client-server API,
//! "Rooms", "Room membership", "Sending events", "Getting events for a room").
//!
//! Every write goes through `Rooms::send_local`, the one append path.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use ruma::api::Direction;
use ruma::api::client::context::get_context;
use ruma::api::client::knock::knock_room;
use ruma::api::client::membership::forget_room;
use ruma::api::client::membership::get_member_events;
use ruma::api::client::membership::{
    ban_user, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_members, joined_rooms,
    kick_user, leave_room, unban_user,
};
use ruma::api::client::message::{get_message_events, send_message_event};
use ruma::api::client::redact::redact_event;
use ruma::api::client::room::{create_room, get_room_event};
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};
use unitas_federation::rooms::{
    AppendError, EventError, EventTemplate, NewRoom, Pdu, RoomOptions, RoomVersion, Signer,
};
use unitas_storage::{ClientData, ClientExtras, RemoteInvites, RoomEvents};

use crate::api::ApiError;
use crate::api::ruma::{ClientUser, Ruma, RumaResponse};
use crate::ephemeral::Mark;
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

impl From<AppendError> for ApiError {
    fn from(err: AppendError) -> Self {
        match err {
            AppendError::Event(EventError::Unauthorized(reason)) => ApiError::forbidden(reason),
            AppendError::Event(EventError::TooLarge(reason)) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", reason)
            }
            AppendError::Event(EventError::UnsupportedRoomVersion(v)) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("Room version {v} is not supported"),
            ),
            AppendError::Event(other) => ApiError::bad_json(other.to_string()),
            AppendError::UnknownRoom(room) => ApiError::not_found(format!("Unknown room {room}")),
            other => ApiError::internal(&other),
        }
    }
}

/// The event as clients see it (client-server event format).
pub fn client_event(pdu: &Pdu) -> Value {
    let content: Value =
        serde_json::from_str(pdu.content.get()).unwrap_or(Value::Object(Default::default()));
    let mut event = json!({
        "event_id": pdu.event_id,
        "type": pdu.kind.to_string(),
        "sender": pdu.sender,
        "origin_server_ts": u64::from(pdu.origin_server_ts.0),
        "room_id": pdu.room_id,
        "content": content,
        "unsigned": {},
    });
    if let Some(key) = &pdu.state_key {
        event["state_key"] = json!(key);
    }
    if let Some(redacts) = &pdu.redacts {
        event["redacts"] = json!(redacts);
    }
    event
}

/// The event as clients see it, redacted when a redaction applied to it.
pub async fn visible_event(
    state: &AppState,
    pdu: &Pdu,
    redacted_by: Option<&str>,
) -> std::result::Result<Value, ApiError> {
    let Some(redaction) = redacted_by else {
        return Ok(client_event(pdu));
    };
    let version = state
        .store
        .get_room(pdu.room_id.as_str())
        .await?
        .and_then(|room| RoomVersion::parse(&room.room_version))
        .ok_or_else(|| ApiError::internal(&"room without a known version"))?;
    let redacted = unitas_federation::rooms::redact::redact_pdu(pdu, &version)
        .map_err(|e| ApiError::internal(&e))?;
    let mut event = client_event(&redacted);
    event["unsigned"]["redacted_because"] = json!({"event_id": redaction});
    Ok(event)
}

/// A JSON value as a ruma `Raw<T>`.
pub fn raw<T>(value: &Value) -> std::result::Result<Raw<T>, ApiError> {
    let json = serde_json::value::to_raw_value(value).map_err(|e| ApiError::internal(&e))?;
    Ok(Raw::from_json(json))
}

fn signer(user: &ClientUser) -> Signer<'_> {
    Signer {
        server_name: user.territory.server_name(),
        key: &user.territory.key,
    }
}

/// The membership of `user` in the current state of `room_id`.
pub async fn membership(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> std::result::Result<Option<String>, ApiError> {
    let Some(id) = state
        .rooms
        .current_state_event_id(room_id, "m.room.member", user.as_str())
        .await?
    else {
        return Ok(None);
    };
    let Some(pdu) = state.rooms.get_pdu(&id).await? else {
        return Ok(None);
    };
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    Ok(content["membership"].as_str().map(str::to_owned))
}

/// Whether `user` is joined to any of `rooms` (each looked up in its current state, without
/// copying it).
pub async fn joined_to_any(
    state: &AppState,
    rooms: &[ruma::OwnedRoomId],
    user: &UserId,
) -> std::result::Result<bool, ApiError> {
    for room_id in rooms {
        if membership(state, room_id, user).await?.as_deref() == Some("join") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `M_FORBIDDEN` unless `user` is joined to the room.
pub async fn require_joined(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> std::result::Result<(), ApiError> {
    match membership(state, room_id, user).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "{user} is not in room {room_id}"
        ))),
    }
}

async fn send(
    state: &AppState,
    user: &ClientUser,
    room_id: &RoomId,
    template: EventTemplate,
) -> std::result::Result<Arc<Pdu>, ApiError> {
    Ok(state
        .rooms
        .send_local(room_id, &user.user_id, &template, signer(user))
        .await?)
}

/// A join's content with the joining user's profile (display name, avatar) added.
async fn join_content(
    state: &AppState,
    user: &UserId,
    mut content: Value,
) -> std::result::Result<Value, ApiError> {
    let profile = state.store.get_profile(user.as_str()).await?;
    if let Some(name) = profile.displayname {
        content["displayname"] = json!(name);
    }
    if let Some(url) = profile.avatar_url {
        content["avatar_url"] = json!(url);
    }
    Ok(content)
}

/// Puts a changed profile field (`displayname` or `avatar_url`; `None`: removed) into the user's
/// membership in every room they are joined to, as a new `m.room.member` event, as Synapse does:
/// other members see names and avatars from the room's state. A room that refuses it is
/// logged and skipped; the profile itself is already changed.
pub(crate) async fn profile_to_rooms(
    state: &AppState,
    user: &ClientUser,
    field: &str,
    value: Option<&str>,
) -> std::result::Result<(), ApiError> {
    let rooms = state
        .store
        .list_membership_rooms(user.user_id.as_str())
        .await?;
    for room in rooms {
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room.as_str()) else {
            continue;
        };
        let Some((_, current)) = crate::api::restricted::state_content(
            state,
            &room_id,
            "m.room.member",
            user.user_id.as_str(),
        )
        .await?
        else {
            continue;
        };
        if current["membership"] != "join" {
            continue;
        }
        let mut content = current.clone();
        match (value, content.as_object_mut()) {
            (Some(value), Some(map)) => {
                map.insert(field.to_owned(), json!(value));
            }
            (None, Some(map)) => {
                map.remove(field);
            }
            (_, None) => continue,
        }
        if content == current {
            continue;
        }
        let template = EventTemplate::state("m.room.member", user.user_id.as_str(), content);
        if let Err(error) = send(state, user, &room_id, template).await {
            tracing::warn!(%room_id, ?error, "profile change not sent into the room");
        }
    }
    Ok(())
}

/// Sets `target`'s membership with an optional reason.
async fn set_membership(
    state: &AppState,
    user: &ClientUser,
    room_id: &RoomId,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
    extra: Value,
) -> std::result::Result<Arc<Pdu>, ApiError> {
    let mut content = json!({"membership": membership});
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    if let Value::Object(map) = extra {
        for (k, v) in map {
            content[k] = v;
        }
    }
    if membership == "join" {
        content = join_content(state, target, content).await?;
    }
    send(
        state,
        user,
        room_id,
        EventTemplate::state("m.room.member", target.as_str(), content),
    )
    .await
}

/// `POST /_matrix/client/v3/createRoom`.
pub async fn create_room_route(
    State(state): State<AppState>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    let version_id = body
        .room_version
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| state.config.rooms.default_version.clone());
    let version = RoomVersion::parse(&version_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version_id} is not supported"),
        )
    })?;
    use create_room::v3::RoomPreset;
    let preset = body.preset.clone().unwrap_or(match body.visibility {
        ruma::api::client::room::Visibility::Public => RoomPreset::PublicChat,
        _ => RoomPreset::PrivateChat,
    });
    let join_rule = if preset == RoomPreset::PublicChat {
        "public"
    } else {
        "invite"
    };
    let object = |raw: Option<&serde_json::value::RawValue>| -> std::result::Result<serde_json::Map<String, Value>, ApiError> {
        match raw {
            None => Ok(Default::default()),
            Some(raw) => match serde_json::from_str(raw.get()) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(ApiError::bad_json("expected a JSON object")),
            },
        }
    };
    let mut options = RoomOptions {
        creation_content: object(body.creation_content.as_ref().map(|r| r.json()))?,
        power_levels_override: object(
            body.power_level_content_override.as_ref().map(|r| r.json()),
        )?,
        extra_admins: vec![],
    };
    if preset == RoomPreset::TrustedPrivateChat {
        options.extra_admins = body.invite.clone();
    }
    let mut initial_state = Vec::new();
    if preset != RoomPreset::PublicChat {
        initial_state.push(EventTemplate::state(
            "m.room.guest_access",
            "",
            json!({"guest_access": "can_join"}),
        ));
    }
    for event in &body.initial_state {
        let value: Value = serde_json::from_str(event.json().get())
            .map_err(|e| ApiError::bad_json(e.to_string()))?;
        let kind = value["type"]
            .as_str()
            .ok_or_else(|| ApiError::bad_json("initial_state event without type"))?;
        let key = value["state_key"].as_str().unwrap_or("");
        initial_state.push(EventTemplate::state(kind, key, value["content"].clone()));
    }
    if let Some(name) = &body.name {
        initial_state.push(EventTemplate::state(
            "m.room.name",
            "",
            json!({"name": name}),
        ));
    }
    if let Some(topic) = &body.topic {
        initial_state.push(EventTemplate::state(
            "m.room.topic",
            "",
            json!({"topic": topic}),
        ));
    }
    // The alias must be free before anything is created.
    let alias = match &body.room_alias_name {
        Some(name) => {
            let alias = ruma::OwnedRoomAliasId::try_from(format!(
                "#{name}:{}",
                user.territory.server_name()
            ))
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string())
            })?;
            if state.store.get_alias(alias.as_str()).await?.is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "M_ROOM_IN_USE",
                    "Room alias already taken",
                ));
            }
            initial_state.push(EventTemplate::state(
                "m.room.canonical_alias",
                "",
                json!({"alias": alias}),
            ));
            Some(alias)
        }
        None => None,
    };
    let room = NewRoom {
        version,
        join_rule: join_rule.into(),
        initial_state,
    };
    let room_id = state
        .rooms
        .create_room_with(signer(&user), &user.user_id, room, options)
        .await?;
    if let Some(alias) = &alias {
        super::directory::add_alias(&state, alias, &room_id, user.user_id.as_str()).await?;
    }
    if body.visibility == ruma::api::client::room::Visibility::Public {
        state
            .store
            .set_room_visibility(room_id.as_str(), "public")
            .await?;
    }
    // The room exists from here on: an invite that fails (another server that cannot be reached
    // or refuses) leaves the room and the other invites as they are, and the creator can invite
    // again. Failing the request would leave a room the client was told was not made.
    for invitee in &body.invite {
        let extra = if body.is_direct {
            json!({"is_direct": true})
        } else {
            json!({})
        };
        if let Err(err) = invite(&state, &user, &room_id, invitee, extra).await {
            tracing::warn!(room = %room_id, %invitee, errcode = err.errcode, error = %err.message, "an invite of a new room failed");
        }
    }
    Ok(create_room::v3::Response::new(room_id).into())
}

async fn join(
    state: &AppState,
    user: &ClientUser,
    room_id: &RoomId,
    via: &[String],
) -> std::result::Result<(), ApiError> {
    if state.rooms.current_state(room_id).await?.is_none() {
        // Unknown here: join through another server (the ones the client named, else the
        // server in an old-style room ID).
        let mut servers: Vec<String> = via.to_vec();
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_string());
        }
        let pending = state
            .store
            .list_remote_invites(user.user_id.as_str())
            .await?
            .into_iter()
            .find(|i| i.room_id == room_id.as_str());
        if let Some(pending) = &pending {
            servers.insert(0, pending.via.clone());
        }
        servers.retain(|s| !state.territories.hosts(s));
        servers.dedup();
        if servers.is_empty() {
            return Err(ApiError::not_found(format!(
                "Room {room_id} is not known to this server and no server to join it through was given"
            )));
        }
        state
            .inbound
            .join_remote(
                &user.territory.local_server(),
                &user.user_id,
                room_id,
                &servers,
            )
            .await
            .map_err(|e| ApiError::not_found(e.to_string()))?;
        if pending.is_some() {
            state
                .store
                .delete_remote_invite(user.user_id.as_str(), room_id.as_str())
                .await?;
        }
        return Ok(());
    }
    if membership(state, room_id, &user.user_id).await?.as_deref() == Some("join") {
        return Ok(());
    }
    // A restricted room: a member of an allowed room joins, vouched for by a local user who
    // may invite (of the user's own territory when there is one; another territory of this
    // node signs the join too).
    let by = match crate::api::restricted::authorise_join(
        state,
        room_id,
        &user.user_id,
        user.territory.server_name(),
    )
    .await?
    {
        crate::api::restricted::JoinAuthorisation::NotNeeded => None,
        crate::api::restricted::JoinAuthorisation::By(by) => Some(by),
    };
    let Some(by) = by else {
        set_membership(
            state,
            user,
            room_id,
            &user.user_id.clone(),
            "join",
            None,
            json!({}),
        )
        .await?;
        return Ok(());
    };
    let content = join_content(
        state,
        &user.user_id,
        json!({"membership": "join", "join_authorised_via_users_server": by}),
    )
    .await?;
    let template = EventTemplate::state("m.room.member", user.user_id.as_str(), content);
    let vouching = state
        .territories
        .by_server_name(by.server_name().as_str())
        .filter(|t| t.server_name() != user.territory.server_name());
    match vouching {
        None => send(state, user, room_id, template).await?,
        Some(territory) => {
            state
                .rooms
                .send_local_cosigned(
                    room_id,
                    &user.user_id,
                    &template,
                    signer(user),
                    Signer {
                        server_name: territory.server_name(),
                        key: &territory.key,
                    },
                )
                .await?
        }
    };
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`.
pub async fn join_room_by_id_route(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let user = req.user()?.clone();
    join(&state, &user, &req.body.room_id, &[]).await?;
    Ok(join_room_by_id::v3::Response::new(req.body.room_id).into())
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}` (room IDs; aliases come with the directory).
pub async fn join_room_by_id_or_alias_route(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let user = req.user()?.clone();
    let mut via: Vec<String> = req.body.via.iter().map(ToString::to_string).collect();
    let room_id = match OwnedRoomId::try_from(req.body.room_id_or_alias.as_str()) {
        Ok(room_id) => room_id,
        Err(_) => {
            let alias = ruma::OwnedRoomAliasId::try_from(req.body.room_id_or_alias.as_str())
                .map_err(|e| ApiError::invalid_param(e.to_string()))?;
            let (room_id, servers) =
                super::directory::resolve_any_alias(&state, &alias, &user.territory).await?;
            via.extend(servers);
            room_id
        }
    };
    join(&state, &user, &room_id, &via).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id).into())
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`: asks to join a room whose join rule allows
/// knocking.
pub async fn knock_room_route(
    State(state): State<AppState>,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let user = req.user()?.clone();
    let mut via: Vec<String> = req.body.via.iter().map(ToString::to_string).collect();
    let room_id = match OwnedRoomId::try_from(req.body.room_id_or_alias.as_str()) {
        Ok(room_id) => room_id,
        Err(_) => {
            let alias = ruma::OwnedRoomAliasId::try_from(req.body.room_id_or_alias.as_str())
                .map_err(|e| ApiError::invalid_param(e.to_string()))?;
            let (room_id, servers) =
                super::directory::resolve_any_alias(&state, &alias, &user.territory).await?;
            via.extend(servers);
            room_id
        }
    };
    if state.rooms.current_state(&room_id).await?.is_none() {
        // A room this node is not in: knock through the servers named (or the room ID's).
        via.extend(room_id.server_name().map(|s| s.to_string()));
        via.retain(|s| !state.territories.hosts(s));
        let mut last = format!("Room {room_id} is not known to this server");
        for server in &via {
            match state
                .inbound
                .knock_remote(
                    &user.territory.local_server(),
                    &user.user_id,
                    &room_id,
                    server,
                )
                .await
            {
                Ok((knock, shown)) => {
                    // Shown in the knocker's sync (`rooms.knock`) until answered or withdrawn.
                    let position = state.ephemeral.reserve();
                    position.mark(Mark::RemoteInvites(user.user_id.to_string()));
                    state
                        .store
                        .store_remote_invite(&unitas_storage::RemoteInvite {
                            user_id: user.user_id.to_string(),
                            room_id: room_id.to_string(),
                            event_json: knock.federation_json().to_owned(),
                            invite_state: serde_json::to_string(&shown)
                                .map_err(|e| ApiError::internal(&e))?,
                            via: server.clone(),
                            position: position.at(),
                            membership: "knock".into(),
                        })
                        .await?;
                    drop(position);
                    return Ok(knock_room::v3::Response::new(room_id).into());
                }
                Err(err) => last = format!("could not knock through {server}: {err}"),
            }
        }
        return Err(ApiError::not_found(last));
    }
    set_membership(
        &state,
        &user,
        &room_id,
        &user.user_id.clone(),
        "knock",
        req.body.reason.as_deref(),
        json!({}),
    )
    .await?;
    Ok(knock_room::v3::Response::new(room_id).into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`.
pub async fn invite_user_route(
    State(state): State<AppState>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let user = req.user()?.clone();
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.body.recipient else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            "Third-party invites are not supported",
        ));
    };
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    invite(
        &state,
        &user,
        &req.body.room_id,
        &recipient.user_id,
        json!({}),
    )
    .await?;
    Ok(invite_user::v3::Response::new().into())
}

/// Invites `invitee` as `user`: a local user directly; a user of another server through that
/// server, which countersigns the invite before it is appended. `extra`: more content
/// (`is_direct`).
async fn invite(
    state: &AppState,
    user: &ClientUser,
    room_id: &RoomId,
    invitee: &UserId,
    extra: Value,
) -> std::result::Result<(), ApiError> {
    let target_server = invitee.server_name();
    if state.territories.hosts(target_server.as_str()) {
        set_membership(state, user, room_id, invitee, "invite", None, extra).await?;
        return Ok(());
    }
    let version = state
        .rooms
        .room_version(room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown room"))?;
    let mut content = json!({"membership": "invite"});
    if let (Some(content), Some(extra)) = (content.as_object_mut(), extra.as_object()) {
        content.extend(extra.clone());
    }
    let template = EventTemplate::state("m.room.member", invitee.as_str(), content);
    let built = state
        .rooms
        .build_local(room_id, &user.user_id, &template, signer(user))
        .await?;
    let stripped = stripped_state(state, room_id, &user.user_id).await?;
    let signed = state
        .inbound
        .request_invite_signature(
            &user.territory.local_server(),
            target_server,
            &built,
            &version,
            stripped,
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("{target_server} did not accept the invite: {e}"),
            )
        })?;
    state.rooms.append_own(signed).await?;
    Ok(())
}

/// What an invitee sees of a room before joining: its essentials and the inviter's membership
/// (the spec's recommended stripped state).
pub async fn stripped_state(
    state: &AppState,
    room_id: &RoomId,
    inviter: &UserId,
) -> std::result::Result<Vec<Value>, ApiError> {
    let mut stripped = Vec::new();
    for event in current_state_events(state, room_id).await? {
        let kind = event.kind.to_string();
        let relevant = matches!(
            kind.as_str(),
            "m.room.create"
                | "m.room.join_rules"
                | "m.room.name"
                | "m.room.avatar"
                | "m.room.canonical_alias"
                | "m.room.encryption"
        ) || (kind == "m.room.member"
            && event.state_key.as_deref() == Some(inviter.as_str()));
        if relevant {
            let full = client_event(&event);
            stripped.push(json!({"type": full["type"], "state_key": full["state_key"],
                "sender": full["sender"], "content": full["content"]}));
        }
    }
    Ok(stripped)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`.
pub async fn leave_room_route(
    State(state): State<AppState>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let user = req.user()?.clone();
    if state.rooms.room_version(&req.body.room_id).await?.is_none() {
        // Declining an invite into (or withdrawing a knock on) a room this node is not in:
        // through the inviting (knocked-through) server, and locally whatever it answers (the
        // user asked to be rid of it).
        let pending = state
            .store
            .list_remote_invites(user.user_id.as_str())
            .await?
            .into_iter()
            .find(|i| i.room_id == req.body.room_id.as_str())
            .ok_or_else(|| ApiError::not_found("You are not invited to this room nor knocking"))?;
        if let Err(err) = state
            .inbound
            .leave_remote(
                &user.territory.local_server(),
                &user.user_id,
                &req.body.room_id,
                &pending.via,
            )
            .await
        {
            tracing::info!(room = %req.body.room_id, error = %err, "remote decline failed");
        }
        state
            .store
            .delete_remote_invite(user.user_id.as_str(), req.body.room_id.as_str())
            .await?;
        // Wakes syncing clients (the invite or knock is gone).
        state
            .ephemeral
            .reserve()
            .mark(Mark::RemoteInvites(user.user_id.to_string()));
        return Ok(leave_room::v3::Response::new().into());
    }
    set_membership(
        &state,
        &user,
        &req.body.room_id,
        &user.user_id.clone(),
        "leave",
        req.body.reason.as_deref(),
        json!({}),
    )
    .await?;
    Ok(leave_room::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`.
pub async fn kick_user_route(
    State(state): State<AppState>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let user = req.user()?.clone();
    set_membership(
        &state,
        &user,
        &req.body.room_id,
        &req.body.user_id,
        "leave",
        req.body.reason.as_deref(),
        json!({}),
    )
    .await?;
    Ok(kick_user::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`.
pub async fn ban_user_route(
    State(state): State<AppState>,
    req: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let user = req.user()?.clone();
    set_membership(
        &state,
        &user,
        &req.body.room_id,
        &req.body.user_id,
        "ban",
        req.body.reason.as_deref(),
        json!({}),
    )
    .await?;
    Ok(ban_user::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`.
pub async fn unban_user_route(
    State(state): State<AppState>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let user = req.user()?.clone();
    set_membership(
        &state,
        &user,
        &req.body.room_id,
        &req.body.user_id,
        "leave",
        req.body.reason.as_deref(),
        json!({}),
    )
    .await?;
    Ok(unban_user::v3::Response::new().into())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`: idempotent per device and
/// transaction ID.
pub async fn send_message_event_route(
    State(state): State<AppState>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    if let Some(event_id) = transaction_event(&state, &user, body.txn_id.as_str()).await? {
        return Ok(send_message_event::v3::Response::new(event_id).into());
    }
    // Membership is not checked here: the append path's auth rules refuse a sender who is not
    // joined (M_FORBIDDEN), without a second pass through the room's lock.
    let content: Value = serde_json::from_str(body.body.json().get())
        .map_err(|e| ApiError::bad_json(e.to_string()))?;
    if !content.is_object() {
        return Err(ApiError::bad_json("content must be a JSON object"));
    }
    let template = EventTemplate::message(&body.event_type.to_string(), content);
    let transaction = Some((user.device_id.as_str(), body.txn_id.as_str()));
    let pdu = state
        .rooms
        .send_local_with(
            &body.room_id,
            &user.user_id,
            &template,
            signer(&user),
            transaction,
        )
        .await?;
    state.transactions.insert(
        user.user_id.as_str(),
        user.device_id.as_str(),
        body.txn_id.as_str(),
        pdu.event_id.as_str(),
    );
    Ok(send_message_event::v3::Response::new(pdu.event_id.clone()).into())
}

/// The event a device's transaction ID already produced, from memory once the device's IDs are
/// loaded (one query per device and process).
async fn transaction_event(
    state: &AppState,
    user: &ClientUser,
    txn: &str,
) -> std::result::Result<Option<ruma::OwnedEventId>, ApiError> {
    let (user_id, device) = (user.user_id.as_str(), user.device_id.as_str());
    let known = match state.transactions.get(user_id, device, txn) {
        Some(known) => known,
        None => {
            state.transactions.load(
                user_id,
                device,
                state
                    .store
                    .list_transactions(
                        user_id,
                        device,
                        i64::try_from(crate::tokens::TXNS_PER_DEVICE).unwrap_or(i64::MAX),
                    )
                    .await?,
            );
            state.transactions.get(user_id, device, txn).flatten()
        }
    };
    known
        .map(|id| ruma::OwnedEventId::try_from(id).map_err(|e| ApiError::internal(&e)))
        .transpose()
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub async fn send_state_event_route(
    State(state): State<AppState>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    let content: Value = serde_json::from_str(body.body.json().get())
        .map_err(|e| ApiError::bad_json(e.to_string()))?;
    if !content.is_object() {
        return Err(ApiError::bad_json("content must be a JSON object"));
    }
    let kind = body.event_type.to_string();
    if kind == "m.room.member" {
        return Err(ApiError::forbidden(
            "Use the membership endpoints to change membership",
        ));
    }
    let pdu = send(
        &state,
        &user,
        &body.room_id,
        EventTemplate::state(&kind, &body.state_key, content),
    )
    .await?;
    Ok(send_state_event::v3::Response::new(pdu.event_id.clone()).into())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub async fn get_state_event_for_key_route(
    State(state): State<AppState>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    require_joined(&state, &body.room_id, &user.user_id).await?;
    let current = state
        .rooms
        .current_state(&body.room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown room"))?;
    let id = current
        .get(&(body.event_type.to_string(), body.state_key.clone()))
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let pdu = state
        .rooms
        .get_pdu(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let content = serde_json::value::to_raw_value(
        &serde_json::from_str::<Value>(pdu.content.get()).unwrap_or_default(),
    )
    .map_err(|e| ApiError::internal(&e))?;
    Ok(get_state_event_for_key::v3::Response::new(content).into())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`.
pub async fn get_state_events_route(
    State(state): State<AppState>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let events = current_state_events(&state, &req.body.room_id).await?;
    let raw = events
        .iter()
        .map(|e| raw(&client_event(e)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(get_state_events::v3::Response::new(raw).into())
}

/// Every event of the room's current state.
pub async fn current_state_events(
    state: &AppState,
    room_id: &RoomId,
) -> std::result::Result<Vec<Arc<Pdu>>, ApiError> {
    let current = state
        .rooms
        .current_state(room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown room"))?;
    let mut events = Vec::with_capacity(current.len());
    for id in current.values() {
        if let Some(pdu) = state.rooms.get_pdu(id).await? {
            events.push(pdu);
        }
    }
    events.sort_by_key(|e| e.depth);
    Ok(events)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`.
pub async fn get_room_event_route(
    State(state): State<AppState>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let pdu = state
        .rooms
        .get_pdu(&req.body.event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    if pdu.room_id != req.body.room_id {
        return Err(ApiError::not_found("Event not found"));
    }
    // As the timeline shows it: redacted when redacted, relations bundled.
    let row = state
        .store
        .get_event(pdu.event_id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let event = super::sync::events_of(&state, &[row], &user.user_id)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    Ok(get_room_event::v3::Response::new(raw(&event)?).into())
}

/// `GET /_matrix/client/v3/joined_rooms`.
pub async fn joined_rooms_route(
    State(state): State<AppState>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let user = req.user()?.clone();
    let joined = joined_rooms(&state, &user.user_id).await?;
    Ok(joined_rooms::v3::Response::new(joined).into())
}

/// The rooms `user` is joined to now.
pub async fn joined_rooms(
    state: &AppState,
    user: &UserId,
) -> std::result::Result<Vec<OwnedRoomId>, ApiError> {
    let mut joined = Vec::new();
    for room in state.store.list_membership_rooms(user.as_str()).await? {
        let Ok(room_id) = OwnedRoomId::try_from(room) else {
            continue;
        };
        if membership(state, &room_id, user).await?.as_deref() == Some("join") {
            joined.push(room_id);
        }
    }
    Ok(joined)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`.
pub async fn joined_members_route(
    State(state): State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let mut joined = std::collections::BTreeMap::new();
    for pdu in current_state_events(&state, &req.body.room_id).await? {
        if pdu.kind.to_string() != "m.room.member" {
            continue;
        }
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        if content["membership"] != "join" {
            continue;
        }
        let Some(Ok(member)) = pdu.state_key.as_deref().map(ruma::OwnedUserId::try_from) else {
            continue;
        };
        let mut room_member = joined_members::v3::RoomMember::new();
        room_member.display_name = content["displayname"].as_str().map(str::to_owned);
        room_member.avatar_url = content["avatar_url"].as_str().map(ruma::OwnedMxcUri::from);
        joined.insert(member, room_member);
    }
    Ok(joined_members::v3::Response::new(joined).into())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`.
pub async fn get_member_events_route(
    State(state): State<AppState>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let user = req.user()?.clone();
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let mut chunk = Vec::new();
    for pdu in current_state_events(&state, &req.body.room_id).await? {
        if pdu.kind.to_string() == "m.room.member" {
            chunk.push(raw(&client_event(&pdu))?);
        }
    }
    Ok(get_member_events::v3::Response::new(chunk).into())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`: the redaction is an event
/// like any other; it applies when its sender sent the target or may redact others.
pub async fn redact_event_route(
    State(state): State<AppState>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    if let Some(event_id) = transaction_event(&state, &user, body.txn_id.as_str()).await? {
        return Ok(redact_event::v3::Response::new(event_id).into());
    }
    require_joined(&state, &body.room_id, &user.user_id).await?;
    let target = state
        .rooms
        .get_pdu(&body.event_id)
        .await?
        .filter(|t| t.room_id == body.room_id)
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let mut content = json!({});
    if let Some(reason) = &body.reason {
        content["reason"] = json!(reason);
    }
    let template = EventTemplate {
        kind: "m.room.redaction".into(),
        state_key: None,
        content,
        redacts: Some(body.event_id.clone()),
    };
    let pdu = send(&state, &user, &body.room_id, template).await?;
    if target.sender == user.user_id
        || may_redact_others(&state, &body.room_id, &user.user_id).await?
    {
        state
            .store
            .set_redacted_by(body.event_id.as_str(), pdu.event_id.as_str())
            .await?;
    }
    state
        .store
        .set_transaction(
            user.user_id.as_str(),
            user.device_id.as_str(),
            body.txn_id.as_str(),
            pdu.event_id.as_str(),
            crate::node::now_ms(),
        )
        .await?;
    state.transactions.insert(
        user.user_id.as_str(),
        user.device_id.as_str(),
        body.txn_id.as_str(),
        pdu.event_id.as_str(),
    );
    Ok(redact_event::v3::Response::new(pdu.event_id.clone()).into())
}

/// Whether `user`'s power level reaches the room's `redact` level (creators of v12 rooms always).
async fn may_redact_others(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> std::result::Result<bool, ApiError> {
    let current = state
        .rooms
        .current_state(room_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown room"))?;
    let content =
        |kind: &str| {
            let id = current.get(&(kind.to_owned(), String::new())).cloned();
            async move {
                match id {
                    Some(id) => Ok::<_, ApiError>(state.rooms.get_pdu(&id).await?.map(|p| {
                        serde_json::from_str::<Value>(p.content.get()).unwrap_or_default()
                    })),
                    None => Ok(None),
                }
            }
        };
    let create = content("m.room.create").await?.unwrap_or_default();
    let levels = content("m.room.power_levels").await?.unwrap_or_default();
    let creator = match current.get(&("m.room.create".to_owned(), String::new())) {
        Some(id) => state.rooms.get_pdu(id).await?.map(|c| c.sender.clone()),
        None => None,
    };
    if create["room_version"] == "12" && creator.as_deref() == Some(user) {
        return Ok(true);
    }
    let mine = levels["users"][user.as_str()]
        .as_i64()
        .or(levels["users_default"].as_i64())
        .unwrap_or(0);
    Ok(mine >= levels["redact"].as_i64().unwrap_or(50))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`: the room leaves the user's lists once left.
pub async fn forget_room_route(
    State(state): State<AppState>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let user = req.user()?.clone();
    if matches!(
        membership(&state, &req.body.room_id, &user.user_id)
            .await?
            .as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Leave the room before forgetting it",
        ));
    }
    Ok(forget_room::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`.
pub async fn get_context_route(
    State(state): State<AppState>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    require_joined(&state, &body.room_id, &user.user_id).await?;
    let row = state
        .store
        .get_event(body.event_id.as_str())
        .await?
        .filter(|r| r.room_id == body.room_id.as_str())
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let position = row
        .stream_ordering
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let limit = i64::try_from(u64::from(body.limit))
        .unwrap_or(10)
        .clamp(0, 100);
    let half = (limit / 2).max(1);
    let before = state
        .store
        .get_room_events_before(body.room_id.as_str(), position, half)
        .await?;
    let after = state
        .store
        .get_room_events_after(body.room_id.as_str(), position, limit - half.min(limit))
        .await?;
    let mut response = get_context::v3::Response::new();
    // As the timeline shows them: redacted when redacted, relations bundled.
    let mut to_raw = Vec::new();
    for rows in [&before, &after] {
        let events = super::sync::events_of(&state, rows, &user.user_id).await?;
        to_raw.push(
            events
                .iter()
                .map(raw)
                .collect::<std::result::Result<Vec<_>, _>>()?,
        );
    }
    response.events_after = to_raw.pop().unwrap_or_default();
    response.events_before = to_raw.pop().unwrap_or_default();
    let event = super::sync::events_of(&state, std::slice::from_ref(&row), &user.user_id)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    response.event = Some(raw(&event)?);
    response.start = Some(format!(
        "s{}",
        before
            .last()
            .and_then(|r| r.stream_ordering)
            .map(|s| s - 1)
            .unwrap_or(position - 1)
    ));
    response.end = Some(format!(
        "s{}",
        after
            .last()
            .and_then(|r| r.stream_ordering)
            .unwrap_or(position)
    ));
    response.state = current_state_events(&state, &body.room_id)
        .await?
        .iter()
        .map(|e| raw(&client_event(e)))
        .collect::<std::result::Result<_, _>>()?;
    Ok(response.into())
}

/// Parses a pagination token (`s<position>`).
pub fn parse_token(token: &str) -> std::result::Result<i64, ApiError> {
    token
        .strip_prefix('s')
        .and_then(|n| n.split('_').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::invalid_param(format!("Invalid pagination token {token:?}")))
}

/// Fetches history older than this server's earliest event of the room from the other servers
/// in it, signing as the user's territory: the number of events added (0 on failure: paging
/// then simply ends where this server's history does).
async fn backfill(state: &AppState, user: &ClientUser, room_id: &RoomId, limit: i64) -> usize {
    let wanted = usize::try_from(limit).unwrap_or(unitas_federation::inbound::MAX_BACKFILL);
    match state
        .inbound
        .backfill(&user.territory.local_server(), room_id, wanted)
        .await
    {
        Ok(added) => added,
        Err(err) => {
            tracing::info!(%room_id, error = %err, "no history from other servers");
            0
        }
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`. Tokens are stream positions: backwards
/// from `s<n>` returns n and below, forwards from `s<n>` returns what follows n.
pub async fn get_message_events_route(
    State(state): State<AppState>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    require_joined(&state, &body.room_id, &user.user_id).await?;
    let limit = i64::try_from(u64::from(body.limit))
        .unwrap_or(10)
        .clamp(1, 1000);
    let now = *state.rooms.subscribe().borrow();
    let to = body.to.as_deref().map(parse_token).transpose()?;
    let (rows, start) = match body.dir {
        Direction::Backward => {
            let from = body
                .from
                .as_deref()
                .map(parse_token)
                .transpose()?
                .unwrap_or(now);
            let mut rows = state
                .store
                .get_room_events_before(body.room_id.as_str(), from + 1, limit)
                .await?;
            // At the start of what this server has: older history may be on the other servers.
            if (rows.len() as i64) < limit
                && to.is_none()
                && backfill(&state, &user, &body.room_id, limit).await > 0
            {
                rows = state
                    .store
                    .get_room_events_before(body.room_id.as_str(), from + 1, limit)
                    .await?;
            }
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| to.is_none_or(|to| r.stream_ordering.unwrap_or(0) > to))
                .collect();
            (rows, from)
        }
        Direction::Forward => {
            let from = body
                .from
                .as_deref()
                .map(parse_token)
                .transpose()?
                // Backfilled history sits below position 1.
                .unwrap_or(i64::MIN);
            let rows = state
                .store
                .get_room_events_after(body.room_id.as_str(), from, limit)
                .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| to.is_none_or(|to| r.stream_ordering.unwrap_or(0) <= to))
                .collect();
            (rows, from)
        }
    };
    let mut chunk = Vec::with_capacity(rows.len());
    for row in &rows {
        let Ok(event_id) = ruma::OwnedEventId::try_from(row.event_id.as_str()) else {
            continue;
        };
        if let Some(pdu) = state.rooms.get_pdu(&event_id).await? {
            chunk.push(visible_event(&state, &pdu, row.redacted_by.as_deref()).await?);
        }
    }
    let chunk = crate::api::client::relations::bundle_all(&state, chunk, &user.user_id)
        .await?
        .iter()
        .map(raw)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut response = get_message_events::v3::Response::new();
    response.start = format!("s{start}");
    // Tokens name a position: backwards from `s<n>` includes n, forwards from it starts after n.
    let backward = matches!(body.dir, Direction::Backward);
    response.end = (rows.len() as i64 == limit)
        .then(|| rows.last().and_then(|r| r.stream_ordering))
        .flatten()
        .map(|s| {
            if backward {
                format!("s{}", s - 1)
            } else {
                format!("s{s}")
            }
        });
    response.chunk = chunk;
    Ok(response.into())
}
