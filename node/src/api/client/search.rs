//! `POST /_matrix/client/v3/search` (spec: client-server API, "Server Side Search"): room
//! events whose text (`content.body`, `content.name`, `content.topic`) holds every word of the
//! term, in the rooms the user is joined to (and the filter's rooms among them), best match or
//! newest first, a page at a time (`next_batch`). SQLite uses FTS5, PostgreSQL its full text
//! search; text is indexed when an event is stored, redacted events drop out.

use axum::Json;
use axum::extract::State;
use ruma::api::client::search::search_events;
use serde_json::{Value, json};
use unitas_storage::{EventSearch, SearchQuery};

use crate::api::ApiError;
use crate::api::client::rooms::visible_event;
use crate::api::ruma::Ruma;
use crate::state::AppState;

/// Results per page when the filter says nothing; the most a page may hold.
const DEFAULT_LIMIT: i64 = 10;
const MAX_LIMIT: i64 = 50;

fn offset_of(token: Option<&str>) -> Result<i64, ApiError> {
    match token {
        None => Ok(0),
        Some(token) => token
            .strip_prefix('o')
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid_param(format!("Invalid next_batch {token:?}"))),
    }
}

/// `POST /_matrix/client/v3/search`.
pub async fn search_route(
    State(state): State<AppState>,
    req: Ruma<search_events::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let Some(criteria) = &req.body.search_categories.room_events else {
        return Ok(Json(json!({"search_categories": {}})));
    };
    let offset = offset_of(req.body.next_batch.as_deref())?;
    // The rooms the user is joined to, narrowed by the filter.
    let filter = &criteria.filter;
    let rooms: Vec<String> = crate::api::client::rooms::joined_rooms(&state, &user.user_id)
        .await?
        .into_iter()
        .filter(|room_id| {
            filter
                .rooms
                .as_ref()
                .is_none_or(|only| only.contains(room_id))
                && !filter.not_rooms.contains(room_id)
        })
        .map(|room_id| room_id.to_string())
        .collect();
    let keys: Vec<&str> = match &criteria.keys {
        Some(keys) if !keys.is_empty() => keys.iter().map(|k| k.as_str()).collect(),
        _ => vec!["content.body", "content.name", "content.topic"],
    };
    let limit = filter
        .limit
        .map(|l| i64::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let recent = criteria.order_by.as_ref().map(|o| o.as_str()) == Some("recent");
    let page = state
        .store
        .search_events(SearchQuery {
            term: &criteria.search_term,
            rooms: &rooms,
            keys: &keys,
            recent,
            limit,
            offset,
        })
        .await?;
    let mut results = Vec::new();
    for (event_id, rank) in &page.hits {
        let Ok(id) = ruma::OwnedEventId::try_from(event_id.as_str()) else {
            continue;
        };
        let Some(pdu) = state.rooms.get_pdu(&id).await? else {
            continue;
        };
        results.push(json!({
            "rank": rank,
            "result": visible_event(&state, &pdu, None).await?,
        }));
    }
    let mut room_events = json!({
        "count": page.count,
        "results": results,
        "highlights": criteria.search_term.split_whitespace().collect::<Vec<_>>(),
    });
    let next = offset + i64::try_from(page.hits.len()).unwrap_or(0);
    if next < page.count && !page.hits.is_empty() {
        room_events["next_batch"] = json!(format!("o{next}"));
    }
    Ok(Json(
        json!({"search_categories": {"room_events": room_events}}),
    ))
}
