//! Push rules (spec: client-server API, "Push Rules"): the spec's default rule set for each
//! user, changed with the rule endpoints and kept as the user's `m.push_rules` account data
//! (`{"global": ruleset}`), so clients also see it in sync.

use axum::extract::State;
use ruma::UserId;
use ruma::api::client::push::{
    delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
    get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
};
use ruma::push::Ruleset;
use serde_json::{Value, json};
use unitas_storage::ClientExtras;

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

/// The account data type the rules live in.
pub const PUSH_RULES: &str = "m.push_rules";

/// The content of `m.push_rules` for a user who never changed a rule.
pub fn default_content(user: &UserId) -> Value {
    json!({ "global": Ruleset::server_default(user) })
}

/// A user's rule set: the stored one, else the spec's defaults.
pub async fn ruleset(state: &AppState, user: &UserId) -> std::result::Result<Ruleset, ApiError> {
    let stored = state
        .store
        .get_account_data(user.as_str(), "", PUSH_RULES)
        .await?;
    Ok(stored
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| serde_json::from_value::<Ruleset>(v["global"].clone()).ok())
        .unwrap_or_else(|| Ruleset::server_default(user)))
}

async fn save(
    state: &AppState,
    user: &UserId,
    rules: &Ruleset,
) -> std::result::Result<(), ApiError> {
    let content = json!({ "global": rules });
    crate::api::client::ephemeral::store_account_data(state, user, "", PUSH_RULES, &content).await
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
