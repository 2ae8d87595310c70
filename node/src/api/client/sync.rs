//! `GET /_matrix/client/v3/sync` (spec: client-server API, "Syncing").
//!
//! Tokens are stream positions (`s<n>`): a sync since `s<n>` returns what was appended after
//! position n. Positions are published only once everything below them is durable (the writer
//! assigns them in commit order), so a client that follows `next_batch` never misses an event;
//! what a limited timeline leaves out is reachable from its `prev_batch` with `/messages`.
//!
//! Long-polling waits on the user's own watch, which the append path bumps after a commit that
//! concerns the user (no polling loop, and unrelated rooms wake nobody).

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::sync::sync_events;
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{Value, json};
use unitas_storage::{
    ClientData, ClientExtras, DeviceInbox, DeviceKeys, EventRow, PushStore, RemoteInvites,
    RoomEvents,
};

use super::rooms::{
    client_event, current_state_events, joined_to_any, membership, parse_token, visible_event,
};
use crate::api::ApiError;
use crate::api::ruma::{ClientUser, Ruma};
use crate::ephemeral::Mark;
use crate::state::AppState;

/// Stream positions of timeline events (a user's membership event and read receipt's event,
/// read by every sync for every room), kept once read: a timeline event's position never
/// changes. Bounded: past
/// [`MAX_POSITIONS`] entries the map starts over.
#[derive(Debug, Default)]
pub struct EventPositions {
    map: std::sync::Mutex<HashMap<String, i64>>,
}

/// Most positions kept.
const MAX_POSITIONS: usize = 100_000;

impl EventPositions {
    /// The event's stream position (`None`: not stored, or not in the timeline).
    pub(crate) async fn position(
        &self,
        state: &AppState,
        event_id: &str,
    ) -> Result<Option<i64>, ApiError> {
        if let Some(at) = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(event_id)
        {
            return Ok(Some(*at));
        }
        let Some(row) = state.store.get_event(event_id).await? else {
            return Ok(None);
        };
        // Outliers have no position yet (they may get one when promoted): not kept.
        let (false, Some(at)) = (row.outlier, row.stream_ordering) else {
            return Ok(row.stream_ordering);
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_POSITIONS {
            map.clear();
        }
        map.insert(event_id.to_owned(), at);
        Ok(Some(at))
    }
}

/// Timeline events per room when the filter does not say.
const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// Longest long-poll a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /_matrix/client/v3/sync`.
pub async fn sync_events_route(
    State(state): State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let body = req.body;
    let since = body.since.as_deref().map(parse_token).transpose()?;
    // `s<stream>_<aux>_<counted>`; a token without the last part had counts up to its stream.
    let mut parts = body.since.as_deref().unwrap_or_default().split('_').skip(1);
    let since_aux = parts.next().and_then(|a| a.parse::<i64>().ok());
    let since_counted = since.map(|s| parts.next().and_then(|c| c.parse().ok()).unwrap_or(s));
    let (limit, lazy_members, presence, threads) =
        sync_filter(&state, &user, body.filter.as_ref()).await?;
    // The user is online while a client syncs (unless it asks otherwise), until the guard drops.
    let _syncing = crate::presence::syncing(&state, &user.user_id, &body.set_presence).await?;
    let mut waiter = SyncWaiter::new(&state, &user.user_id, body.timeout.unwrap_or_default());
    loop {
        let (now, now_aux, counted) = waiter.positions(&state);
        let window = Window {
            since,
            now,
            since_aux: since.map(|_| since_aux.unwrap_or(0)),
            now_aux,
            since_counted,
            counted,
        };
        let options = Options {
            full_state: body.full_state,
            limit,
            lazy_members,
            presence,
            threads,
        };
        let (response, has_updates) = build(&state, &user, window, options).await?;
        // Nothing new: wait for the next commit or change, or the timeout.
        if since.is_none() || has_updates || body.full_state || !waiter.changed().await {
            return Ok(Json(response));
        }
    }
}

/// What a long-polling sync waits on: commits that concern the user (the append path bumps
/// the user's own watch, so unrelated rooms wake nobody) and changes of receipts, account data,
/// typing and the like. Subscribed before the first positions are read: a commit in between
/// still wakes the wait.
pub(crate) struct SyncWaiter {
    mine: tokio::sync::watch::Receiver<u64>,
    position: tokio::sync::watch::Receiver<i64>,
    aux: tokio::sync::watch::Receiver<i64>,
    deadline: tokio::time::Instant,
}

impl SyncWaiter {
    /// A waiter for `user` that gives up after `timeout` (at most a minute).
    pub(crate) fn new(state: &AppState, user: &ruma::UserId, timeout: Duration) -> SyncWaiter {
        SyncWaiter {
            mine: state.rooms.subscribe_user(user),
            position: state.rooms.subscribe(),
            aux: state.ephemeral.subscribe(),
            deadline: tokio::time::Instant::now() + timeout.min(MAX_TIMEOUT),
        }
    }

    /// The stream and aux positions to answer up to, and how far the push rules have seen
    /// the stream (unread counts read after this include every event up to it; the push
    /// worker wakes the sync again when it gets further and someone's counts change).
    pub(crate) fn positions(&mut self, state: &AppState) -> (i64, i64, i64) {
        self.mine.borrow_and_update();
        let now = *self.position.borrow();
        let now_aux = *self.aux.borrow_and_update();
        // Before the worker started (just after a restart) nothing is known to be counted:
        // the rooms' counts are sent again once it has caught up.
        let counted = state.push.evaluated().unwrap_or(0);
        (now, now_aux, counted)
    }

    /// Waits for the next change; false when the timeout came first.
    pub(crate) async fn changed(&mut self) -> bool {
        let woken = tokio::time::timeout_at(self.deadline, async {
            tokio::select! {
                r = self.mine.changed() => r.is_ok(),
                r = self.aux.changed() => r.is_ok(),
            }
        })
        .await;
        matches!(woken, Ok(true))
    }
}

/// What a sync covers: events in `(since, now]`, other changes in `(since_aux, now_aux]`, and
/// unread counts of rooms with events the push rules saw in `(since_counted, counted]`.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Option<i64>,
    now: i64,
    since_aux: Option<i64>,
    now_aux: i64,
    since_counted: Option<i64>,
    counted: i64,
}

/// What a sync asks for besides its window.
#[derive(Debug, Clone, Copy)]
struct Options {
    full_state: bool,
    /// Timeline events per room.
    limit: i64,
    /// Members only for the timeline's senders.
    lazy_members: bool,
    /// Presence events wanted.
    presence: bool,
    /// Thread notifications counted apart (`unread_thread_notifications`).
    threads: bool,
}

/// What the sync filter asks for: the timeline limit, whether members are lazy-loaded, and
/// whether presence is wanted.
async fn sync_filter(
    state: &AppState,
    user: &ClientUser,
    filter: Option<&sync_events::v3::Filter>,
) -> Result<(i64, bool, bool, bool), ApiError> {
    let definition: Option<FilterDefinition> = match filter {
        Some(sync_events::v3::Filter::FilterDefinition(definition)) => Some(definition.clone()),
        Some(sync_events::v3::Filter::FilterId(id)) => match id.parse::<i64>() {
            Ok(id) => match state.store.get_filter(user.user_id.as_str(), id).await? {
                Some(json) => serde_json::from_str(&json).ok(),
                None => None,
            },
            Err(_) => None,
        },
        _ => None,
    };
    let lazy = definition
        .as_ref()
        .is_some_and(|d| !d.room.state.lazy_load_options.is_disabled());
    let presence = definition.as_ref().is_none_or(|d| {
        let filter = &d.presence;
        let excluded = |t: &String| t == "*" || t == "m.presence";
        filter.limit.is_none_or(|l| u64::from(l) > 0)
            && filter
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == "*" || t == "m.presence"))
            && !filter.not_types.iter().any(excluded)
    });
    let limit = definition
        .as_ref()
        .and_then(|d| d.room.timeline.limit)
        .map(|l| i64::try_from(u64::from(l)).unwrap_or(DEFAULT_TIMELINE_LIMIT))
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, 1000);
    let threads = definition
        .as_ref()
        .is_some_and(|d| d.room.timeline.unread_thread_notifications);
    Ok((limit, lazy, presence, threads))
}

/// Timeline events as clients see them, relations bundled (`unsigned.m.relations`).
pub(crate) async fn events_of(
    state: &AppState,
    rows: &[EventRow],
    user: &ruma::UserId,
) -> Result<Vec<Value>, ApiError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(id) = OwnedEventId::try_from(row.event_id.as_str()) else {
            continue;
        };
        if let Some(pdu) = state.rooms.get_pdu(&id).await? {
            events.push(visible_event(state, &pdu, row.redacted_by.as_deref()).await?);
        }
    }
    crate::api::client::relations::bundle_all(state, events, user).await
}

/// One sync response for positions `(since, now]`, and whether it carries anything.
async fn build(
    state: &AppState,
    user: &ClientUser,
    window: Window,
    options: Options,
) -> Result<(Value, bool), ApiError> {
    let Window {
        since,
        now,
        since_aux,
        now_aux,
        since_counted,
        counted,
    } = window;
    let Options {
        full_state,
        limit,
        lazy_members,
        presence: wants_presence,
        threads,
    } = options;
    // What does not depend on the rooms is read at once, beside the rooms' reads (each read is
    // a round trip to a database connection; the pool has several).
    let account_mark = Mark::AccountData(user.user_id.to_string());
    let invites_mark = Mark::RemoteInvites(user.user_id.to_string());
    let (
        account_data,
        mut devices,
        rooms,
        remote_invites,
        (one_time_keys, fallback_types),
        to_device,
    ) = tokio::try_join!(
        async {
            // A read is skipped when the aux marks say it would find nothing new.
            if state.ephemeral.unchanged_since(&account_mark, since_aux) {
                return Ok(Vec::new());
            }
            let data = state
                .store
                .list_account_data_since(user.user_id.as_str(), since_aux.unwrap_or(0))
                .await?;
            Ok::<_, ApiError>(data)
        },
        DeviceListDelta::new(state, &user.user_id, since.and(since_aux), now_aux),
        async {
            let rooms = state
                .store
                .list_membership_rooms(user.user_id.as_str())
                .await?;
            Ok(rooms)
        },
        async {
            if state.ephemeral.unchanged_since(&invites_mark, since_aux) {
                return Ok(Vec::new());
            }
            Ok(state
                .store
                .list_remote_invites(user.user_id.as_str())
                .await?)
        },
        key_counts(state, user),
        to_device_events(state, user, since.and(since_aux), now_aux),
    )?;
    let mut global_data: Vec<Value> = account_data
        .iter()
        .filter(|(room, _, _)| room.is_empty())
        .map(|(_, k, c)| data_event(k, c))
        .collect();
    // Clients expect the push rules in an initial sync, defaults included.
    if since.is_none()
        && !account_data
            .iter()
            .any(|(room, kind, _)| room.is_empty() && kind == crate::api::client::push::PUSH_RULES)
    {
        global_data.push(json!({
            "type": crate::api::client::push::PUSH_RULES,
            "content": crate::api::client::push::default_content(&user.user_id),
        }));
    }
    let mut join = serde_json::Map::new();
    let mut invite = serde_json::Map::new();
    let mut leave = serde_json::Map::new();
    let mut knock = serde_json::Map::new();
    let mut joined_rooms = Vec::new();
    for room in rooms {
        let Ok(room_id) = OwnedRoomId::try_from(room) else {
            continue;
        };
        let Some(current) = state.rooms.current_state(&room_id).await? else {
            continue;
        };
        let Some(member_id) = current
            .get(&("m.room.member".to_owned(), user.user_id.to_string()))
            .cloned()
        else {
            continue;
        };
        let member_position = state
            .event_positions
            .position(state, member_id.as_str())
            .await?
            .unwrap_or(0);
        if member_position > now {
            // Not yet published: the next sync has it.
            continue;
        }
        let changed_since = since.is_none_or(|s| member_position > s);
        match membership(state, &room_id, &user.user_id).await?.as_deref() {
            Some("join") => {
                // device_lists: users who started sharing this room with the user (everyone in
                // it when the user is the one who joined) are `changed`; who left may be `left`.
                joined_rooms.push(room_id.clone());
                // The newest `limit` events of (since, now], oldest first, and the receipts.
                let (mut rows, receipts) = tokio::try_join!(
                    async {
                        let rows = state
                            .store
                            .get_room_events_before(room_id.as_str(), now + 1, limit + 1)
                            .await?;
                        Ok::<_, ApiError>(rows)
                    },
                    receipt_event(state, &room_id, since_aux),
                )?;
                let recounted = recounted(&rows, limit, since_counted, counted);
                rows.retain(|r| since.is_none_or(|s| r.stream_ordering.unwrap_or(0) > s));
                let limited = rows.len() as i64 > limit;
                // Not limited: the rows are the whole window, and its membership changes are
                // theirs (no read needed).
                let window_members = (!limited).then(|| {
                    rows.iter()
                        .filter(|r| r.event_type == "m.room.member")
                        .filter_map(|r| r.state_key.clone())
                        .collect()
                });
                devices
                    .joined_room(
                        state,
                        &user.user_id,
                        &room_id,
                        &current,
                        (since, now),
                        (changed_since, window_members),
                    )
                    .await?;
                rows.truncate(limit as usize);
                rows.reverse();
                let room_data: Vec<Value> = account_data
                    .iter()
                    .filter(|(r, _, _)| r == room_id.as_str())
                    .map(|(_, k, c)| data_event(k, c))
                    .collect();
                let mut ephemeral = Vec::new();
                if let Some(receipts) = receipts {
                    ephemeral.push(receipts);
                }
                if let Some(typing) = state.ephemeral.typing_since(&room_id, since_aux) {
                    ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": typing}}));
                }
                if rows.is_empty()
                    && ephemeral.is_empty()
                    && room_data.is_empty()
                    && !recounted
                    && !full_state
                    && since.is_some()
                {
                    continue;
                }
                let counts = async {
                    Ok(if threads {
                        let (main, per_thread) =
                            thread_counts(state, &user.user_id, &room_id, member_position).await?;
                        (main, Some(per_thread))
                    } else {
                        (
                            unread_counts(state, &user.user_id, &room_id, member_position).await?,
                            None,
                        )
                    })
                };
                let (timeline, (unread, thread_unread)) =
                    tokio::try_join!(events_of(state, &rows, &user.user_id), counts)?;
                let prev_batch = rows
                    .first()
                    .and_then(|r| r.stream_ordering)
                    .map(|s| format!("s{}", s - 1))
                    .unwrap_or(format!("s{now}"));

                let in_timeline: std::collections::HashSet<&str> =
                    rows.iter().map(|r| r.event_id.as_str()).collect();
                let senders: std::collections::HashSet<&str> =
                    rows.iter().map(|r| r.sender.as_str()).collect();
                let state_events = if since.is_none() || full_state || limited || changed_since {
                    current_state_events(state, &room_id)
                        .await?
                        .iter()
                        .filter(|e| !in_timeline.contains(e.event_id.as_str()))
                        // Lazy-loading: members only for the timeline's senders and the user.
                        .filter(|e| {
                            !lazy_members
                                || e.kind.to_string() != "m.room.member"
                                || e.state_key.as_deref() == Some(user.user_id.as_str())
                                || senders.contains(e.state_key.as_deref().unwrap_or(""))
                        })
                        .map(|e| client_event(e))
                        .collect()
                } else {
                    Vec::new()
                };
                let mut joined = json!({
                    "timeline": {"events": timeline, "limited": limited, "prev_batch": prev_batch},
                    "state": {"events": state_events},
                    "account_data": {"events": room_data},
                    "ephemeral": {"events": ephemeral},
                    "unread_notifications": {"notification_count": unread.0, "highlight_count": unread.1},
                    "summary": {},
                });
                if let Some(per_thread) = thread_unread {
                    joined["unread_thread_notifications"] = per_thread;
                }
                join.insert(room_id.to_string(), joined);
            }
            Some("knock") if changed_since => {
                // The room's essentials with the knock itself (the user's own membership).
                let stripped = super::rooms::stripped_state(state, &room_id, &user.user_id).await?;
                knock.insert(
                    room_id.to_string(),
                    json!({"knock_state": {"events": stripped}}),
                );
            }
            Some("invite") if changed_since => {
                // The room's essentials and the inviter's membership, then the invite itself.
                let Some(invite_event) = state.rooms.get_pdu(&member_id).await? else {
                    continue;
                };
                let mut stripped =
                    super::rooms::stripped_state(state, &room_id, &invite_event.sender).await?;
                let full = client_event(&invite_event);
                stripped.push(json!({"type": full["type"], "state_key": full["state_key"],
                    "sender": full["sender"], "content": full["content"]}));
                invite.insert(
                    room_id.to_string(),
                    json!({"invite_state": {"events": stripped}}),
                );
            }
            Some("leave" | "ban") if since.is_some() && changed_since => {
                devices.left_room(state, &current).await?;
                let mut rows = state
                    .store
                    .get_room_events_before(room_id.as_str(), member_position + 1, limit)
                    .await?;
                rows.retain(|r| since.is_none_or(|s| r.stream_ordering.unwrap_or(0) > s));
                // Someone who was only invited (or knocking) sees just their leave, not the
                // room's messages.
                if !was_joined_before(state, &member_id, &user.user_id).await? {
                    rows.retain(|r| r.event_id == member_id.as_str());
                }
                rows.reverse();
                let timeline = events_of(state, &rows, &user.user_id).await?;
                leave.insert(
                    room_id.to_string(),
                    json!({"timeline": {"events": timeline, "limited": false}, "state": {"events": []}}),
                );
            }
            _ => {}
        }
    }
    let (changed_devices, left_devices) =
        devices.finish(state, &user.user_id, &joined_rooms).await?;
    // Presence of the user and of users sharing a joined room with them.
    let mut presence = Vec::new();
    if wants_presence {
        for (other, entry) in state.presence.changed_since(since_aux, now_aux) {
            if other == user.user_id || joined_to_any(state, &joined_rooms, &other).await? {
                presence.push(crate::presence::client_event(&other, &entry));
            }
        }
    }
    // Invites into rooms this node is not in (received over federation).
    for pending in remote_invites {
        let fresh = since_aux.is_none_or(|s| pending.position > s) && pending.position <= now_aux;
        if !fresh || join.contains_key(&pending.room_id) || invite.contains_key(&pending.room_id) {
            continue;
        }
        let events: Value = serde_json::from_str(&pending.invite_state).unwrap_or(json!([]));
        if pending.membership == "knock" {
            // What the room showed the knocker, then the knock itself.
            let mut events = events.as_array().cloned().unwrap_or_default();
            if let Ok(ours) = serde_json::from_str::<Value>(&pending.event_json) {
                events.push(json!({"type": ours["type"], "state_key": ours["state_key"],
                    "sender": ours["sender"], "content": ours["content"]}));
            }
            knock.insert(
                pending.room_id.clone(),
                json!({"knock_state": {"events": events}}),
            );
        } else {
            invite.insert(
                pending.room_id.clone(),
                json!({"invite_state": {"events": events}}),
            );
        }
    }
    let has_updates = !(join.is_empty()
        && invite.is_empty()
        && knock.is_empty()
        && leave.is_empty()
        && global_data.is_empty()
        && to_device.is_empty()
        && changed_devices.is_empty()
        && left_devices.is_empty()
        && presence.is_empty());
    let mut rooms = HashMap::new();
    rooms.insert("join", Value::Object(join));
    rooms.insert("invite", Value::Object(invite));
    rooms.insert("leave", Value::Object(leave));
    rooms.insert("knock", Value::Object(knock));
    let response = json!({
        "next_batch": format!("s{now}_{now_aux}_{counted}"),
        "rooms": rooms,
        "account_data": {"events": global_data},
        "presence": {"events": presence},
        "to_device": {"events": to_device},
        "device_lists": {"changed": changed_devices, "left": left_devices},
        "device_one_time_keys_count": one_time_keys,
        "device_unused_fallback_key_types": fallback_types,
    });
    Ok((response, has_updates))
}

/// Whether the push rules saw events of a room (its newest `rows`, `limit + 1` at most,
/// newest first) in `(since_counted, counted]`: the counts the last response carried did not
/// include them, so the room's counts are sent again, even without new events. Only events the
/// worker saw since count (a worker still behind wakes nobody over and over).
fn recounted(rows: &[EventRow], limit: i64, since_counted: Option<i64>, counted: i64) -> bool {
    let Some(since) = since_counted else {
        return false;
    };
    let seen = |p: i64| p > since && p <= counted;
    let position = |r: &EventRow| r.stream_ordering.unwrap_or(0);
    rows.iter().any(|r| seen(position(r)))
        // More events than were read: older ones may be among those seen.
        || (rows.len() as i64 > limit
            && counted > since
            && rows.last().is_some_and(|r| position(r) > since))
}

/// Notifying events after the user's read receipts (or `member_position`, their membership,
/// when they sent none): `(notifications, highlights)`, from the push rules' verdicts (see
/// [`crate::push`]), threads included.
pub(crate) async fn unread_counts(
    state: &AppState,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
    member_position: i64,
) -> Result<(i64, i64), ApiError> {
    // The main timeline after its receipt, and each thread after its own (or an unthreaded)
    // receipt: what one client read in a thread does not count on another.
    let ((main, main_highlights), threads) =
        thread_counts(state, user, room_id, member_position).await?;
    let mut counts = (main, main_highlights);
    for thread in threads.as_object().into_iter().flat_map(|t| t.values()) {
        counts.0 += thread["notification_count"].as_i64().unwrap_or(0);
        counts.1 += thread["highlight_count"].as_i64().unwrap_or(0);
    }
    Ok(counts)
}

/// The counts of a client that keeps threads apart (`unread_thread_notifications` in its
/// filter): the main timeline's `(notifications, highlights)` and each thread's
/// `unread_thread_notifications` entry.
async fn thread_counts(
    state: &AppState,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
    member_position: i64,
) -> Result<((i64, i64), Value), ApiError> {
    // After their receipts, else their membership; in one read.
    let (main, per_thread) = state
        .store
        .count_unread(user.as_str(), room_id.as_str(), member_position)
        .await?;
    let mut threads = serde_json::Map::new();
    for (root, notifications, highlights) in per_thread {
        threads.insert(
            root,
            json!({"notification_count": notifications, "highlight_count": highlights}),
        );
    }
    Ok((main, Value::Object(threads)))
}

/// The room's read receipts after aux position `since` (all when `None`) as one `m.receipt`
/// event, or `None` when there are none.
pub(crate) async fn receipt_event(
    state: &AppState,
    room_id: &ruma::RoomId,
    since: Option<i64>,
) -> Result<Option<Value>, ApiError> {
    if state
        .ephemeral
        .unchanged_since(&Mark::Receipts(room_id.to_string()), since)
    {
        return Ok(None);
    }
    let receipts = state
        .store
        .list_receipts_since(room_id.as_str(), since.unwrap_or(0))
        .await?;
    if receipts.is_empty() {
        return Ok(None);
    }
    let mut content = serde_json::Map::new();
    for (reader, kind, thread, event_id, ts) in receipts {
        let mut receipt = json!({"ts": ts});
        if !thread.is_empty() {
            receipt["thread_id"] = json!(thread);
        }
        let entry = content.entry(event_id).or_insert_with(|| json!({}));
        entry[kind.as_str()][reader.as_str()] = receipt;
    }
    Ok(Some(json!({"type": "m.receipt", "content": content})))
}

/// The device's one-time key counts and unused fallback key types (what its encryption needs
/// to keep enough keys on the server).
pub(crate) async fn key_counts(
    state: &AppState,
    user: &ClientUser,
) -> Result<(serde_json::Map<String, Value>, Vec<String>), ApiError> {
    let (user_id, device_id) = (user.user_id.as_str(), user.device_id.as_str());
    let (counts, fallback_types) = state.store.key_counts(user_id, device_id).await?;
    let one_time_keys = counts
        .into_iter()
        .map(|(algorithm, count)| (algorithm, count.into()))
        .collect();
    Ok((one_time_keys, fallback_types))
}

/// The device's to-device messages up to aux position `now_aux`; those up to `delivered` were
/// delivered by an earlier response and are dropped now.
pub(crate) async fn to_device_events(
    state: &AppState,
    user: &ClientUser,
    delivered: Option<i64>,
    now_aux: i64,
) -> Result<Vec<Value>, ApiError> {
    let (user_id, device_id) = (user.user_id.as_str(), user.device_id.as_str());
    // Read empty before (what was delivered is deleted) and nothing came since: no read.
    if state.ephemeral.inbox_empty(user_id, device_id) {
        return Ok(Vec::new());
    }
    let messages = state
        .store
        .take_to_device(user_id, device_id, delivered, now_aux)
        .await?;
    if messages.is_empty() {
        // Nothing up to `now_aux`, and what `delivered` covers is deleted now.
        state.ephemeral.set_inbox_empty(user_id, device_id, now_aux);
    }
    Ok(messages
        .into_iter()
        .map(|(sender, kind, content)| {
            json!({"sender": sender, "type": kind,
                   "content": serde_json::from_str::<Value>(&content).unwrap_or_default()})
        })
        .collect())
}

/// An account data event as clients get it.
pub(crate) fn data_event(kind: &str, content: &str) -> Value {
    json!({"type": kind, "content": serde_json::from_str::<Value>(content).unwrap_or_default()})
}

/// The `device_lists` of an incremental sync: users whose devices a client must query again
/// (`changed`: their devices changed and they share a joined room with the user, or they just
/// started sharing one) and users who share no room with the user any more (`left`).
#[derive(Debug, Default)]
pub(crate) struct DeviceListDelta {
    /// Users whose devices changed in the window.
    device_changes: Vec<String>,
    changed: std::collections::BTreeSet<String>,
    /// Users who may have stopped sharing every room with the user.
    maybe_left: std::collections::BTreeSet<String>,
}

impl DeviceListDelta {
    /// Device changes in aux positions `(since_aux, now_aux]`; nothing for an initial sync
    /// (`since_aux` `None`).
    pub(crate) async fn new(
        state: &AppState,
        user: &ruma::UserId,
        since_aux: Option<i64>,
        now_aux: i64,
    ) -> Result<DeviceListDelta, ApiError> {
        let mut delta = DeviceListDelta::default();
        if let Some(from) = since_aux {
            if !state.ephemeral.changed_since(&Mark::DeviceLists, from) {
                return Ok(delta);
            }
            delta.device_changes = state.store.list_device_list_changes(from, now_aux).await?;
            if delta.device_changes.iter().any(|u| u == user.as_str()) {
                delta.changed.insert(user.to_string());
            }
        }
        Ok(delta)
    }

    /// A room the user is joined to, with its current state; `window` is the stream window
    /// `(since, now]` (`since` `None`: initial), `changed_since` whether the user's own
    /// membership changed in it (then everyone in the room is new to them), and `in_window`
    /// the users whose membership changed in the window when the caller knows them.
    pub(crate) async fn joined_room(
        &mut self,
        state: &AppState,
        user: &ruma::UserId,
        room_id: &ruma::RoomId,
        current: &unitas_federation::rooms::auth::State,
        (since, now): (Option<i64>, i64),
        (changed_since, in_window): (bool, Option<Vec<String>>),
    ) -> Result<(), ApiError> {
        if let Some(since) = since {
            let others = if changed_since {
                member_keys(current)
            } else if let Some(known) = in_window {
                known
            } else {
                state
                    .store
                    .list_member_changes(room_id.as_str(), since, now)
                    .await?
            };
            for other in others {
                if other == user.as_str() {
                    continue;
                }
                if is_joined(state, current, &other).await? {
                    self.changed.insert(other);
                } else if !changed_since {
                    self.maybe_left.insert(other);
                }
            }
        }
        for other in &self.device_changes {
            if !self.changed.contains(other) && is_joined(state, current, other).await? {
                self.changed.insert(other.clone());
            }
        }
        Ok(())
    }

    /// A room the user left in the window: everyone they shared it with may now share nothing
    /// with them.
    pub(crate) async fn left_room(
        &mut self,
        state: &AppState,
        current: &unitas_federation::rooms::auth::State,
    ) -> Result<(), ApiError> {
        for other in member_keys(current) {
            if is_joined(state, current, &other).await? {
                self.maybe_left.insert(other);
            }
        }
        Ok(())
    }

    /// `(changed, left)`, given the rooms the user is joined to.
    pub(crate) async fn finish(
        self,
        state: &AppState,
        user: &ruma::UserId,
        joined_rooms: &[OwnedRoomId],
    ) -> Result<(Vec<String>, Vec<String>), ApiError> {
        let DeviceListDelta {
            changed,
            mut maybe_left,
            ..
        } = self;
        maybe_left.retain(|other| other != user.as_str() && !changed.contains(other));
        let mut left = Vec::new();
        for other in maybe_left {
            let Ok(other_id) = ruma::OwnedUserId::try_from(other.as_str()) else {
                continue;
            };
            if !joined_to_any(state, joined_rooms, &other_id).await? {
                left.push(other);
            }
        }
        Ok((changed.into_iter().collect(), left))
    }
}

/// Whether `user` was joined in the state before their membership event `member_id`.
async fn was_joined_before(
    state: &AppState,
    member_id: &ruma::EventId,
    user: &ruma::UserId,
) -> Result<bool, ApiError> {
    let Some(before) = state.rooms.state_before(member_id).await? else {
        return Ok(false);
    };
    is_joined(state, &before, user.as_str()).await
}

/// The users with a membership event in a room's state.
fn member_keys(current: &unitas_federation::rooms::auth::State) -> Vec<String> {
    current
        .keys()
        .filter(|(kind, _)| kind == "m.room.member")
        .map(|(_, key)| key.clone())
        .collect()
}

/// Whether `user` is joined in a room's state.
async fn is_joined(
    state: &AppState,
    current: &unitas_federation::rooms::auth::State,
    user: &str,
) -> Result<bool, ApiError> {
    let Some(id) = current.get(&("m.room.member".to_owned(), user.to_owned())) else {
        return Ok(false);
    };
    let Some(pdu) = state.rooms.get_pdu(id).await? else {
        return Ok(false);
    };
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    Ok(content["membership"] == "join")
}
