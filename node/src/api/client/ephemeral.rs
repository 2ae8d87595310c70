//! Typing, receipts, read markers, account data and tags (spec: client-server API, "Typing
//! Notifications", "Receipts", "Fully read markers", "Client Config", "Room Tagging").

use std::collections::BTreeMap;

use axum::extract::State;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::presence::{get_presence, set_presence};
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::api::client::typing::create_typing_event;
use ruma::events::receipt::ReceiptThread;
use ruma::presence::PresenceState;
use ruma::serde::Raw;
use ruma::{RoomId, UserId};
use serde_json::{Value, json};
use unitas_storage::{ClientData, ClientExtras};

use super::rooms::require_joined;
use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::ephemeral::Mark;
use crate::node::now_ms;
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

fn own(user: &UserId, target: &UserId) -> std::result::Result<(), ApiError> {
    if user == target {
        Ok(())
    } else {
        Err(ApiError::forbidden("You can only change your own data"))
    }
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`.
pub async fn create_typing_event_route(
    State(state): State<AppState>,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    require_joined(&state, &req.body.room_id, &user.user_id).await?;
    let timeout = match req.body.state {
        create_typing_event::v3::Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    state
        .ephemeral
        .set_typing(&req.body.room_id, &user.user_id, timeout);
    federate_edu(
        &state,
        &req.body.room_id,
        &user.user_id,
        serde_json::json!({"edu_type": "m.typing", "content": {
            "room_id": req.body.room_id, "user_id": user.user_id, "typing": timeout.is_some()}}),
    )
    .await?;
    Ok(create_typing_event::v3::Response::new().into())
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`: accepted and ignored when presence is off.
pub async fn set_presence_route(
    State(state): State<AppState>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let presence = req.body.presence;
    if !matches!(
        presence,
        PresenceState::Online | PresenceState::Unavailable | PresenceState::Offline
    ) {
        return Err(ApiError::invalid_param(
            "presence must be online, unavailable or offline",
        ));
    }
    if let Some(status) = &req.body.status_msg
        && status.len() > crate::presence::MAX_STATUS_BYTES
    {
        return Err(ApiError::invalid_param(
            "status_msg is longer than 1024 bytes",
        ));
    }
    let currently_active = presence == PresenceState::Online;
    crate::presence::set_local(
        &state,
        &user.user_id,
        crate::presence::Change {
            presence,
            status_msg: Some(req.body.status_msg),
            last_active_ms: crate::presence::now(),
            currently_active,
        },
    )
    .await?;
    Ok(set_presence::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`: what is known, else offline; only for
/// oneself and users sharing a joined room (`403 M_FORBIDDEN` otherwise, as Synapse does).
pub async fn get_presence_route(
    State(state): State<AppState>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let user = req.user()?.clone();
    let target = &req.body.user_id;
    if *target != user.user_id && !shares_a_room(&state, &user.user_id, target).await? {
        return Err(ApiError::forbidden(
            "You may see the presence of users you share a room with",
        ));
    }
    let Some(entry) = state.presence.get(target) else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline).into());
    };
    let mut response = get_presence::v3::Response::new(entry.presence);
    response.status_msg = entry.status_msg;
    response.currently_active = Some(entry.currently_active);
    if entry.last_active_ms > 0 {
        response.last_active_ago = Some(std::time::Duration::from_millis(
            crate::presence::now().saturating_sub(entry.last_active_ms),
        ));
    }
    Ok(response.into())
}

/// Whether `user` and `other` are both joined to a room (presence is theirs to see then).
async fn shares_a_room(
    state: &AppState,
    user: &UserId,
    other: &UserId,
) -> std::result::Result<bool, ApiError> {
    let mut joined = Vec::new();
    for room in state.store.list_membership_rooms(user.as_str()).await? {
        if let Ok(room) = ruma::OwnedRoomId::try_from(room)
            && require_joined(state, &room, user).await.is_ok()
        {
            joined.push(room);
        }
    }
    super::rooms::joined_to_any(state, &joined, other).await
}

/// Sends an EDU about a local user to the other servers in the room.
pub async fn federate_edu(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    edu: Value,
) -> std::result::Result<(), ApiError> {
    let mut servers = crate::api::federation_rooms::servers_in_room(state, room).await?;
    servers.retain(|s| !state.territories.hosts(s));
    if !servers.is_empty() {
        state
            .sender
            .send_edu(user.server_name().as_str(), &servers, edu);
    }
    Ok(())
}

async fn store_receipt(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    kind: &str,
    thread: &str,
    event_id: &str,
) -> std::result::Result<(), ApiError> {
    let at = state.ephemeral.reserve();
    at.mark(Mark::Receipts(room.to_string()));
    state
        .store
        .set_receipt(&unitas_storage::NewReceipt {
            room_id: room.as_str(),
            user_id: user.as_str(),
            receipt_type: kind,
            thread_id: thread,
            event_id,
            ts: now_ms(),
            aux: at.at(),
        })
        .await?;
    drop(at);
    // Public receipts of local users go to the room's other servers.
    if kind == "m.read" && state.territories.hosts(user.server_name().as_str()) {
        let mut data = serde_json::json!({"ts": now_ms()});
        if !thread.is_empty() {
            data["thread_id"] = thread.into();
        }
        federate_edu(
            state,
            room,
            user,
            serde_json::json!({"edu_type": "m.receipt", "content": {
                room.as_str(): {"m.read": {user.as_str(): {"event_ids": [event_id], "data": data}}}}}),
        )
        .await?;
    }
    Ok(())
}

/// Applies the EDUs of a transaction from `origin` about its own users: typing and read
/// receipts in rooms it is in, presence, device list updates, to-device messages.
pub async fn apply_edus(
    state: &AppState,
    origin: &ruma::ServerName,
    edus: &[Value],
) -> std::result::Result<(), ApiError> {
    let from_origin = |user: &str| {
        user.split_once(':')
            .is_some_and(|(_, s)| s == origin.as_str())
    };
    for edu in edus {
        let content = &edu["content"];
        match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.typing") => {
                let (Some(room), Some(user)) = (
                    content["room_id"]
                        .as_str()
                        .and_then(|r| ruma::OwnedRoomId::try_from(r).ok()),
                    content["user_id"]
                        .as_str()
                        .and_then(|u| ruma::OwnedUserId::try_from(u).ok()),
                ) else {
                    continue;
                };
                if !from_origin(user.as_str()) || require_joined(state, &room, &user).await.is_err()
                {
                    continue;
                }
                let typing = content["typing"].as_bool().unwrap_or(false);
                let timeout = typing.then_some(std::time::Duration::from_secs(30));
                state.ephemeral.set_typing(&room, &user, timeout);
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else {
                    continue;
                };
                for (room, kinds) in rooms {
                    let Ok(room) = ruma::OwnedRoomId::try_from(room.as_str()) else {
                        continue;
                    };
                    let Some(readers) = kinds.get("m.read").and_then(Value::as_object) else {
                        continue;
                    };
                    for (user, receipt) in readers {
                        let Ok(user) = ruma::OwnedUserId::try_from(user.as_str()) else {
                            continue;
                        };
                        let Some(event_id) = receipt["event_ids"][0].as_str() else {
                            continue;
                        };
                        if !from_origin(user.as_str())
                            || require_joined(state, &room, &user).await.is_err()
                        {
                            continue;
                        }
                        let thread = receipt["data"]["thread_id"].as_str().unwrap_or("");
                        store_receipt(state, &room, &user, "m.read", thread, event_id).await?;
                    }
                }
            }
            Some("m.device_list_update" | "m.signing_key_update") => {
                // Our users' clients re-read the keys of users whose devices changed.
                // Sync lists the user only to our users who share a joined room with them.
                if let Some(user) = content["user_id"].as_str().filter(|u| from_origin(u)) {
                    crate::e2ee::record_change(state, user).await?;
                }
            }
            Some("m.direct_to_device") => {
                let (Some(sender), Some(kind), Some(messages)) = (
                    content["sender"].as_str().filter(|u| from_origin(u)),
                    content["type"].as_str(),
                    content["messages"].as_object(),
                ) else {
                    continue;
                };
                let message_id = content["message_id"].as_str().unwrap_or_default();
                crate::e2ee::deliver_to_device(state, sender, kind, message_id, messages).await?;
            }
            Some("m.presence") => crate::presence::apply_edu(state, origin, content).await?,
            // Anything else is not for us.
            _ => {}
        }
    }
    Ok(())
}

pub(crate) async fn store_account_data(
    state: &AppState,
    user: &UserId,
    room: &str,
    kind: &str,
    content: &Value,
) -> std::result::Result<(), ApiError> {
    let at = state.ephemeral.reserve();
    at.mark(Mark::AccountData(user.to_string()));
    state
        .store
        .set_account_data(user.as_str(), room, kind, &content.to_string(), at.at())
        .await?;
    drop(at);
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub async fn create_receipt_route(
    State(state): State<AppState>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    require_joined(&state, &body.room_id, &user.user_id).await?;
    let kind = body.receipt_type.to_string();
    if kind == "m.fully_read" {
        store_account_data(
            &state,
            &user.user_id,
            body.room_id.as_str(),
            "m.fully_read",
            &json!({"event_id": body.event_id}),
        )
        .await?;
    } else {
        let thread = match &body.thread {
            ReceiptThread::Unthreaded => String::new(),
            ReceiptThread::Main => "main".to_owned(),
            ReceiptThread::Thread(id) => id.to_string(),
            _ => String::new(),
        };
        store_receipt(
            &state,
            &body.room_id,
            &user.user_id,
            &kind,
            &thread,
            body.event_id.as_str(),
        )
        .await?;
    }
    Ok(create_receipt::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`.
pub async fn set_read_marker_route(
    State(state): State<AppState>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    require_joined(&state, &body.room_id, &user.user_id).await?;
    if let Some(id) = &body.fully_read {
        store_account_data(
            &state,
            &user.user_id,
            body.room_id.as_str(),
            "m.fully_read",
            &json!({"event_id": id}),
        )
        .await?;
    }
    if let Some(id) = &body.read_receipt {
        store_receipt(
            &state,
            &body.room_id,
            &user.user_id,
            "m.read",
            "",
            id.as_str(),
        )
        .await?;
    }
    if let Some(id) = &body.private_read_receipt {
        store_receipt(
            &state,
            &body.room_id,
            &user.user_id,
            "m.read.private",
            "",
            id.as_str(),
        )
        .await?;
    }
    Ok(set_read_marker::v3::Response::new().into())
}

/// Account data the server keeps (push rules, read markers) is changed through its own
/// endpoints only (spec: 405 `M_BAD_JSON`).
fn server_managed(kind: &str) -> std::result::Result<(), ApiError> {
    if matches!(kind, "m.push_rules" | "m.fully_read") {
        return Err(ApiError::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("{kind} is kept by the server; use its own endpoints"),
        ));
    }
    Ok(())
}

fn json_of<T>(raw: &Raw<T>) -> std::result::Result<Value, ApiError> {
    let value: Value =
        serde_json::from_str(raw.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_json("account data must be a JSON object"))
    }
}

fn raw_of<T>(text: &str) -> std::result::Result<Raw<T>, ApiError> {
    serde_json::value::RawValue::from_string(text.to_owned())
        .map(Raw::from_json)
        .map_err(|e| ApiError::internal(&e))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub async fn set_global_account_data_route(
    State(state): State<AppState>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let kind = req.body.event_type.to_string();
    server_managed(&kind)?;
    let content = json_of(&req.body.data)?;
    store_account_data(&state, &user.user_id, "", &kind, &content).await?;
    Ok(set_global_account_data::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`.
pub async fn get_global_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let text = state
        .store
        .get_account_data(user.user_id.as_str(), "", &req.body.event_type.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found("Account data not found"))?;
    Ok(get_global_account_data::v3::Response::new(raw_of(&text)?).into())
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn set_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    server_managed(&req.body.event_type.to_string())?;
    let content = json_of(&req.body.data)?;
    store_account_data(
        &state,
        &user.user_id,
        req.body.room_id.as_str(),
        &req.body.event_type.to_string(),
        &content,
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn get_room_account_data_route(
    State(state): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let text = state
        .store
        .get_account_data(
            user.user_id.as_str(),
            req.body.room_id.as_str(),
            &req.body.event_type.to_string(),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("Account data not found"))?;
    Ok(get_room_account_data::v3::Response::new(raw_of(&text)?).into())
}

async fn tags_of(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
) -> std::result::Result<Value, ApiError> {
    let text = state
        .store
        .get_account_data(user.as_str(), room.as_str(), "m.tag")
        .await?;
    let mut content: Value = text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({"tags": {}}));
    if !content["tags"].is_object() {
        content["tags"] = json!({});
    }
    Ok(content)
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`.
pub async fn get_tags_route(
    State(state): State<AppState>,
    req: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let content = tags_of(&state, &user.user_id, &req.body.room_id).await?;
    let tags: BTreeMap<_, _> =
        serde_json::from_value(content["tags"].clone()).map_err(|e| ApiError::internal(&e))?;
    Ok(get_tags::v3::Response::new(tags).into())
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn create_tag_route(
    State(state): State<AppState>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let mut content = tags_of(&state, &user.user_id, &req.body.room_id).await?;
    content["tags"][req.body.tag.as_str()] =
        serde_json::to_value(&req.body.tag_info).map_err(|e| ApiError::internal(&e))?;
    store_account_data(
        &state,
        &user.user_id,
        req.body.room_id.as_str(),
        "m.tag",
        &content,
    )
    .await?;
    Ok(create_tag::v3::Response::new().into())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn delete_tag_route(
    State(state): State<AppState>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let user = req.user()?.clone();
    own(&user.user_id, &req.body.user_id)?;
    let mut content = tags_of(&state, &user.user_id, &req.body.room_id).await?;
    if let Some(tags) = content["tags"].as_object_mut() {
        tags.remove(&req.body.tag);
    }
    store_account_data(
        &state,
        &user.user_id,
        req.body.room_id.as_str(),
        "m.tag",
        &content,
    )
    .await?;
    Ok(delete_tag::v3::Response::new().into())
}
