//! Push rules (spec: client-server API, "Push Rules"): the spec's default rule set for each
//! user, changed with the rule endpoints and kept as the user's `m.push_rules` account data
//! (`{"global": ruleset}`), so clients also see it in sync; `/notifications` and pushers
//! (evaluation and delivery: [`crate::push`]).

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use ruma::UserId;
use ruma::api::client::push::{
    PusherKind, delete_pushrule, get_notifications, get_pushers, get_pushrule,
    get_pushrule_actions, get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope,
    set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};
use ruma::push::Ruleset;
use serde_json::{Value, json};
use unitas_storage::{ClientExtras, PushStore, RoomEvents};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

/// Pushers one user may have.
const MAX_PUSHERS: usize = 100;

/// The account data type the rules live in.
pub const PUSH_RULES: &str = "m.push_rules";

/// The content of `m.push_rules` for a user who never changed a rule.
pub fn default_content(user: &UserId) -> Value {
    json!({ "global": Ruleset::server_default(user) })
}

/// A user's rule set: the stored one, else the spec's defaults.
pub async fn ruleset(state: &AppState, user: &UserId) -> std::result::Result<Ruleset, ApiError> {
    Ok(stored_ruleset(state, user)
        .await?
        .unwrap_or_else(|| Ruleset::server_default(user)))
}

/// The rule set a user changed (`None`: they use the spec's defaults).
pub async fn stored_ruleset(
    state: &AppState,
    user: &UserId,
) -> std::result::Result<Option<Ruleset>, ApiError> {
    let stored = state
        .store
        .get_account_data(user.as_str(), "", PUSH_RULES)
        .await?;
    Ok(stored
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| serde_json::from_value::<Ruleset>(v["global"].clone()).ok()))
}

async fn save(
    state: &AppState,
    user: &UserId,
    rules: &Ruleset,
) -> std::result::Result<(), ApiError> {
    let content = json!({ "global": rules });
    crate::api::client::ephemeral::store_account_data(state, user, "", PUSH_RULES, &content)
        .await?;
    state.push.changed();
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::not_found("No such push rule")
}

/// `GET /_matrix/client/v3/pushrules/`.
pub async fn get_all_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let user = req.user()?.user_id.clone();
    Ok(get_pushrules_all::v3::Response::new(ruleset(&state, &user).await?).into())
}

/// `GET /_matrix/client/v3/pushrules/global/`.
pub async fn get_global_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let user = req.user()?.user_id.clone();
    Ok(get_pushrules_global_scope::v3::Response::new(ruleset(&state, &user).await?).into())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`.
pub async fn get_rule_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let user = req.user()?.user_id.clone();
    let rules = ruleset(&state, &user).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule::v3::Response::new(rule.into()).into())
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` (`before`/`after` place it).
pub async fn set_rule_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let user = req.user()?.user_id.clone();
    let mut rules = ruleset(&state, &user).await?;
    rules
        .insert(
            req.body.rule.clone(),
            req.body.after.as_deref(),
            req.body.before.as_deref(),
        )
        .map_err(|e| match e {
            ruma::push::InsertPushRuleError::UnknownRuleId => not_found(),
            other => ApiError::invalid_param(other.to_string()),
        })?;
    save(&state, &user, &rules).await?;
    Ok(set_pushrule::v3::Response::new().into())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}` (not the server's defaults).
pub async fn delete_rule_route(
    State(state): State<AppState>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let user = req.user()?.user_id.clone();
    let mut rules = ruleset(&state, &user).await?;
    rules
        .remove(req.body.kind.clone(), &req.body.rule_id)
        .map_err(|e| match e {
            ruma::push::RemovePushRuleError::NotFound => not_found(),
            other => ApiError::invalid_param(other.to_string()),
        })?;
    save(&state, &user, &rules).await?;
    Ok(delete_pushrule::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`.
pub async fn get_enabled_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let user = req.user()?.user_id.clone();
    let rules = ruleset(&state, &user).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()).into())
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`.
pub async fn set_enabled_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let user = req.user()?.user_id.clone();
    let mut rules = ruleset(&state, &user).await?;
    rules
        .set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
        .map_err(|_| not_found())?;
    save(&state, &user, &rules).await?;
    Ok(set_pushrule_enabled::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`.
pub async fn get_actions_route(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let user = req.user()?.user_id.clone();
    let rules = ruleset(&state, &user).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()).into())
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`.
pub async fn set_actions_route(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let user = req.user()?.user_id.clone();
    let mut rules = ruleset(&state, &user).await?;
    rules
        .set_actions(
            req.body.kind.clone(),
            &req.body.rule_id,
            req.body.actions.clone(),
        )
        .map_err(|_| not_found())?;
    save(&state, &user, &rules).await?;
    Ok(set_pushrule_actions::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/notifications`: the user's notifications, newest first; `from` is
/// the stream position to continue below, `only=highlight` keeps highlights.
pub async fn notifications_route(
    State(state): State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> std::result::Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let before = match req.body.from.as_deref() {
        Some(from) => Some(
            from.parse::<i64>()
                .map_err(|_| ApiError::invalid_param("from is not a token from this server"))?,
        ),
        None => None,
    };
    let limit = req.body.limit.map(u64::from).unwrap_or(20).clamp(1, 100);
    let limit = i64::try_from(limit).unwrap_or(100);
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    // Each joined room's notifications since the user joined it, newest first across rooms.
    let mut rows = Vec::new();
    for (room_id, joined_at) in joined_with_positions(&state, &user).await? {
        rows.extend(
            state
                .store
                .list_notifications(
                    user.as_str(),
                    room_id.as_str(),
                    (joined_at, before.unwrap_or(i64::MAX)),
                    limit,
                    only_highlight,
                )
                .await?,
        );
    }
    rows.sort_by_key(|a| std::cmp::Reverse(a.stream_ordering));
    rows.truncate(usize::try_from(limit).unwrap_or(100));
    let mut read_up_to: HashMap<String, i64> = HashMap::new();
    let mut notifications = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(event) = state.store.get_event(&row.event_id).await? else {
            continue;
        };
        let Some(event) = crate::api::client::sync::events_of(&state, &[event], &user)
            .await?
            .pop()
        else {
            continue;
        };
        if !read_up_to.contains_key(&row.room_id) {
            let position = match state
                .store
                .get_read_receipt(&row.room_id, user.as_str())
                .await?
            {
                Some(id) => state
                    .store
                    .get_event(&id)
                    .await?
                    .and_then(|e| e.stream_ordering)
                    .unwrap_or(0),
                None => 0,
            };
            read_up_to.insert(row.room_id.clone(), position);
        }
        let read = read_up_to
            .get(&row.room_id)
            .is_some_and(|p| row.stream_ordering <= *p);
        let actions: Value = serde_json::from_str(&row.actions).unwrap_or(json!([]));
        notifications.push(json!({
            "actions": actions,
            "event": event,
            "read": read,
            "room_id": row.room_id,
            "ts": row.ts,
        }));
    }
    let mut body = json!({ "notifications": notifications });
    if i64::try_from(rows.len()).unwrap_or(0) == limit
        && let Some(last) = rows.last()
    {
        body["next_token"] = json!(last.stream_ordering.to_string());
    }
    Ok(Json(body))
}

/// The rooms the user is joined to, with the stream position of their membership.
pub async fn joined_with_positions(
    state: &AppState,
    user: &UserId,
) -> std::result::Result<Vec<(ruma::OwnedRoomId, i64)>, ApiError> {
    let mut out = Vec::new();
    for room_id in crate::api::client::rooms::joined_rooms(state, user).await? {
        if let Some((_, _, position)) =
            crate::api::restricted::member_event(state, &room_id, user).await?
        {
            out.push((room_id, position));
        }
    }
    Ok(out)
}

/// The badge count of a push: how many of the user's rooms have unread notifications.
pub async fn unread_rooms(state: &AppState, user: &UserId) -> std::result::Result<i64, ApiError> {
    let mut count = 0;
    for (room_id, joined_at) in joined_with_positions(state, user).await? {
        let (notifications, _) =
            crate::api::client::sync::unread_counts(state, user, &room_id, joined_at).await?;
        if notifications > 0 {
            count += 1;
        }
    }
    Ok(count)
}

/// `GET /_matrix/client/v3/pushers`.
pub async fn get_pushers_route(
    State(state): State<AppState>,
    req: Ruma<get_pushers::v3::Request>,
) -> std::result::Result<Json<Value>, ApiError> {
    let user = req.user()?.user_id.clone();
    let pushers: Vec<Value> = state
        .store
        .list_pushers(user.as_str())
        .await?
        .into_iter()
        .map(|p| {
            let mut pusher = json!({
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "kind": p.kind,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name,
                "lang": p.lang,
                "data": serde_json::from_str::<Value>(&p.data).unwrap_or(json!({})),
            });
            if let Some(tag) = p.profile_tag {
                pusher["profile_tag"] = json!(tag);
            }
            pusher
        })
        .collect();
    Ok(Json(json!({ "pushers": pushers })))
}

/// `POST /_matrix/client/v3/pushers/set`: `http` pushers (the URL must be an `https` push
/// gateway's notify URL this server may call); `kind: null` deletes. Email pushers are
/// refused: this server sends no email.
pub async fn set_pusher_route(
    State(state): State<AppState>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let client = req.user()?.clone();
    let user = client.user_id.as_str();
    match &req.body.action {
        set_pusher::v3::PusherAction::Delete(ids) => {
            state
                .store
                .delete_pusher(user, &ids.app_id, &ids.pushkey)
                .await?;
        }
        set_pusher::v3::PusherAction::Post(post) => {
            let pusher = &post.pusher;
            if pusher.ids.app_id.len() > 64 {
                return Err(ApiError::invalid_param("app_id is longer than 64 bytes"));
            }
            if pusher.ids.pushkey.len() > 512 {
                return Err(ApiError::invalid_param("pushkey is longer than 512 bytes"));
            }
            let PusherKind::Http(data) = &pusher.kind else {
                return Err(ApiError::invalid_param(
                    "only http pushers are supported (this server sends no email)",
                ));
            };
            state
                .push
                .check_url(&data.url)
                .map_err(ApiError::invalid_param)?;
            let existing = state.store.list_pushers(user).await?;
            let replaces = existing
                .iter()
                .any(|p| p.app_id == pusher.ids.app_id && p.pushkey == pusher.ids.pushkey);
            if !replaces && existing.len() >= MAX_PUSHERS {
                return Err(ApiError::invalid_param(format!(
                    "at most {MAX_PUSHERS} pushers per user"
                )));
            }
            let stored = unitas_storage::Pusher {
                user_id: user.to_owned(),
                app_id: pusher.ids.app_id.clone(),
                pushkey: pusher.ids.pushkey.clone(),
                kind: "http".into(),
                app_display_name: pusher.app_display_name.clone(),
                device_display_name: pusher.device_display_name.clone(),
                profile_tag: pusher.profile_tag.clone(),
                lang: pusher.lang.clone(),
                data: serde_json::to_string(data).unwrap_or_else(|_| "{}".into()),
                device_id: Some(client.device_id.to_string()),
                created_ts: crate::node::now_ms(),
            };
            state.store.set_pusher(&stored, post.append).await?;
        }
        _ => return Err(ApiError::invalid_param("unknown pusher action")),
    }
    state.push.changed();
    Ok(set_pusher::v3::Response::new().into())
}
