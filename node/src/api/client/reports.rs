//! Reporting (spec: client-server API, "Reporting content"): events, rooms and users reported
//! by our users are stored for the node's admins (`unitas reports`). Reporting needs no power:
//! only that the reporter can see what it reports.

use axum::extract::State;
use ruma::api::client::reporting::report_user;
use ruma::api::client::room::{report_content, report_room};
use unitas_storage::{Report, Reports};

use crate::api::ApiError;
use crate::api::client::rooms::membership;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

async fn store(
    state: &AppState,
    kind: &str,
    reporter: &str,
    room_id: Option<String>,
    event_id: Option<String>,
    user_id: Option<String>,
    reason: Option<String>,
) -> std::result::Result<(), ApiError> {
    let id = state
        .store
        .add_report(&Report {
            id: 0,
            kind: kind.into(),
            reporter: reporter.into(),
            room_id,
            event_id,
            user_id,
            reason: reason.map(|r| r.chars().take(1000).collect()),
            created_ts: crate::node::now_ms(),
        })
        .await?;
    tracing::info!(id, kind, reporter, "report received");
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`: `404 M_NOT_FOUND` unless the
/// reporter is in the room and the event is in it.
pub async fn report_event_route(
    State(state): State<AppState>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let user = req.user()?.clone();
    let not_found = || ApiError::not_found("Unknown event or not in the room");
    if membership(&state, &req.body.room_id, &user.user_id)
        .await?
        .is_none()
    {
        return Err(not_found());
    }
    let pdu = state
        .rooms
        .get_pdu(&req.body.event_id)
        .await?
        .filter(|p| p.room_id == req.body.room_id)
        .ok_or_else(not_found)?;
    store(
        &state,
        "event",
        user.user_id.as_str(),
        Some(req.body.room_id.to_string()),
        Some(pdu.event_id.to_string()),
        Some(pdu.sender.to_string()),
        req.body.reason.clone(),
    )
    .await?;
    Ok(report_content::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`: `404 M_NOT_FOUND` for a room this node
/// does not know.
pub async fn report_room_route(
    State(state): State<AppState>,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let user = req.user()?.clone();
    if state.rooms.room_version(&req.body.room_id).await?.is_none() {
        return Err(ApiError::not_found("Unknown room"));
    }
    store(
        &state,
        "room",
        user.user_id.as_str(),
        Some(req.body.room_id.to_string()),
        None,
        None,
        Some(req.body.reason.clone()),
    )
    .await?;
    Ok(report_room::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/users/{userId}/report`: a user of ours that does not exist gets
/// `404 M_NOT_FOUND`; users of other servers are taken as given.
pub async fn report_user_route(
    State(state): State<AppState>,
    req: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response> {
    let user = req.user()?.clone();
    let target = req.body.user_id.as_str();
    if crate::e2ee::is_local(&state, target)
        && unitas_storage::Accounts::get_account(&state.store, target)
            .await?
            .is_none()
    {
        return Err(ApiError::not_found("Unknown user"));
    }
    store(
        &state,
        "user",
        user.user_id.as_str(),
        None,
        None,
        Some(target.to_owned()),
        Some(req.body.reason.clone()),
    )
    .await?;
    Ok(report_user::v3::Response::new().into())
}
