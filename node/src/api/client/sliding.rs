//! Simplified sliding sync (MSC4186,
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`), the protocol Element X
//! and matrix-rust-sdk use.
//!
//! ```text
//!  request (pos, lists with ranges, room_subscriptions, extensions)
//!    -> the connection's snapshot at `pos`: which rooms the client has, up to which stream
//!       position and which state (unknown pos: 400 M_UNKNOWN_POS, the client starts over)
//!    -> rooms of the user sorted by recency (newest event first), filtered per list; the rooms
//!       in the lists' ranges and the subscribed rooms are "in view"
//!    -> each room in view: new to the client (or the user's membership changed) -> `initial`
//!       with the newest events and the required state; known -> the events since the snapshot
//!       (`limited` + `prev_batch` when more than the timeline limit), the state that changed,
//!       the state of patterns asked for the first time; unchanged -> left out
//!    -> extensions (to-device, e2ee, account data, receipts, typing) since the snapshot's
//!       positions
//!    -> a new snapshot under a new `pos`; nothing new: long-poll (woken like /sync v3)
//! ```
//!
//! A position never loses an event: a room leaving the ranges keeps its place in the snapshot,
//! so when it comes back the client gets everything after what it had (or a limited timeline it
//! can page back from). Snapshots live in memory, a few per connection; after a restart every
//! `pos` is unknown and clients start a new connection, which is what the MSC prescribes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ruma::api::client::sync::sync_events::v5;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::{Value, json};
use unitas_storage::{ClientData, ClientExtras, RemoteInvite, RemoteInvites, RoomEvents};

use super::rooms::{current_state_events, stripped_state};
use super::sync::{
    DeviceListDelta, SyncWaiter, data_event, events_of, key_counts, receipt_event,
    to_device_events, unread_counts,
};
use crate::api::ApiError;
use crate::api::restricted::{member_event, state_content};
use crate::api::ruma::{ClientUser, Ruma};
use crate::state::AppState;

/// Snapshots kept per connection (a client may retry the previous `pos`).
const SNAPSHOTS: usize = 4;
/// Connections kept in memory; the least recently used go first.
const CONNECTIONS: usize = 10_000;
/// Most timeline events per room and response.
const MAX_TIMELINE: i64 = 100;
/// New state events of a room looked at for a delta's `required_state`; more: sent as initial.
const STATE_DELTA_CAP: i64 = 500;

/// Event types that make a room more recent (MSC4186's bump event types).
const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];
/// Newest events looked at for a room's recency.
const BUMP_LOOKBACK: i64 = 20;
/// Connections kept per user (a client choosing new `conn_id`s pushes out its own oldest).
const CONNECTIONS_PER_USER: usize = 20;
/// `required_state` patterns kept per room (more: the oldest are forgotten, and sent again
/// when asked again).
const MAX_PATTERNS: usize = 100;

/// What the client has of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoomSent {
    /// Stream position its timeline was sent up to.
    position: i64,
    /// Every `required_state` pattern sent for it so far (new patterns add their state).
    required: Vec<(String, String)>,
    /// Members sent for `$LAZY` (not sent again).
    lazy_sent: HashSet<String>,
    /// The timeline limit of the last response that had the room in view.
    timeline_limit: i64,
    /// The user's membership when sent.
    membership: String,
    /// The unread counts sent (notifications, highlights), and how far the push rules had
    /// seen the stream then (the counts are looked at again when they get further).
    counts: (i64, i64),
    counted: i64,
}

/// A connection's state after one response.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Stream position (events).
    stream: i64,
    /// Aux position (receipts, account data, to-device, device lists).
    aux: i64,
    rooms: HashMap<OwnedRoomId, RoomSent>,
    /// Each list's room count when last sent.
    counts: BTreeMap<String, usize>,
}

#[derive(Debug, Default)]
struct Connection {
    next: u64,
    snapshots: VecDeque<(u64, Snapshot)>,
    used: Option<Instant>,
}

/// The sliding sync connections of every user (in memory).
#[derive(Debug, Default)]
pub struct Connections {
    map: Mutex<HashMap<(OwnedUserId, String, String), Connection>>,
}

impl Connections {
    /// The snapshot at `pos` (a fresh one without `pos`; `None` for an unknown `pos`).
    fn snapshot(&self, key: &(OwnedUserId, String, String), pos: Option<&str>) -> Option<Snapshot> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pos) = pos else {
            return Some(Snapshot::default());
        };
        let n: u64 = pos.parse().ok()?;
        let connection = map.get_mut(key)?;
        connection.used = Some(Instant::now());
        connection
            .snapshots
            .iter()
            .find(|(id, _)| *id == n)
            .map(|(_, s)| s.clone())
    }

    /// Keeps `snapshot` under a new position; returns it.
    fn store(&self, key: (OwnedUserId, String, String), fresh: bool, snapshot: Snapshot) -> String {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) {
            let mine: Vec<_> = map
                .iter()
                .filter(|(k, _)| k.0 == key.0)
                .map(|(k, c)| (c.used, k.clone()))
                .collect();
            if mine.len() >= CONNECTIONS_PER_USER
                && let Some((_, oldest)) = mine.into_iter().min_by_key(|(used, _)| *used)
            {
                map.remove(&oldest);
            }
        }
        if map.len() >= CONNECTIONS && !map.contains_key(&key) {
            let oldest = map
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let connection = map.entry(key).or_default();
        if fresh {
            connection.snapshots.clear();
        }
        connection.next += 1;
        let n = connection.next;
        connection.snapshots.push_back((n, snapshot));
        while connection.snapshots.len() > SNAPSHOTS {
            connection.snapshots.pop_front();
        }
        connection.used = Some(Instant::now());
        n.to_string()
    }
}

/// A room of the user, as the lists see it.
#[derive(Debug, Clone)]
struct Candidate {
    room_id: OwnedRoomId,
    membership: String,
    /// Recency: the stream position of its newest event of a bump type (of the invite for
    /// invites).
    bump: i64,
    /// The stream position of its newest event of any type (what the client may lack).
    latest: i64,
    /// Where the user's membership event is.
    member_position: i64,
    /// An invite into a room this node is not in.
    remote: Option<RemoteInvite>,
    room_type: Option<String>,
    encrypted: bool,
}

/// How one room is to be sent: merged from the lists and subscriptions it is in.
#[derive(Debug, Clone, Default)]
struct Wanted {
    required_state: Vec<(String, String)>,
    timeline_limit: i64,
    lists: HashSet<String>,
    subscribed: bool,
}

impl Wanted {
    fn merge(&mut self, required: &[(ruma::events::StateEventType, String)], limit: u64) {
        for (kind, key) in required {
            let entry = (kind.to_string(), key.clone());
            if !self.required_state.contains(&entry) {
                self.required_state.push(entry);
            }
        }
        let limit = i64::try_from(limit).unwrap_or(MAX_TIMELINE);
        self.timeline_limit = self.timeline_limit.max(limit.min(MAX_TIMELINE));
    }
}

/// What a room's response needs to know of what the client already has.
struct Known<'a> {
    /// Events up to this position (`None`: the room is new to the client).
    since: Option<i64>,
    /// Patterns whose state was sent.
    required: &'a [(String, String)],
    /// `$LAZY` members sent.
    lazy_sent: &'a HashSet<String>,
    /// The timeline limit grew: send the newest events again, as many as asked
    /// (`expanded_timeline`).
    expand: bool,
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
pub async fn sliding_sync_route(
    State(state): State<AppState>,
    req: Ruma<v5::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let body = req.body;
    let key = (
        user.user_id.clone(),
        user.device_id.to_string(),
        body.conn_id.clone().unwrap_or_default(),
    );
    let Some(snapshot) = state.sliding.snapshot(&key, body.pos.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN_POS",
            "Unknown position: start a new connection",
        ));
    };
    let _syncing = crate::presence::syncing(&state, &user.user_id, &body.set_presence).await?;
    let mut waiter = SyncWaiter::new(&state, &user.user_id, body.timeout.unwrap_or_default());
    loop {
        let (now, now_aux, counted) = waiter.positions(&state);
        let (mut response, next, has_updates) =
            build(&state, &user, &body, &snapshot, (now, now_aux, counted)).await?;
        // Nothing new for a connection in progress: wait for a change, or the timeout.
        if body.pos.is_none() || has_updates || !waiter.changed().await {
            response["pos"] = json!(state.sliding.store(key, body.pos.is_none(), next));
            if let Some(txn) = &body.txn_id {
                response["txn_id"] = json!(txn);
            }
            return Ok(Json(response));
        }
    }
}

/// The user's rooms: joined, invited (locally or over federation), and the rooms the
/// snapshot has that the user left since (sent once more with the leave).
async fn candidates(
    state: &AppState,
    user: &ClientUser,
    now: i64,
) -> Result<Vec<Candidate>, ApiError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for room in state
        .store
        .list_membership_rooms(user.user_id.as_str())
        .await?
    {
        let Ok(room_id) = OwnedRoomId::try_from(room) else {
            continue;
        };
        let Some((_, content, member_position)) =
            member_event(state, &room_id, &user.user_id).await?
        else {
            continue;
        };
        if member_position > now {
            continue;
        }
        let membership = content["membership"].as_str().unwrap_or("leave").to_owned();
        // Recency: the newest event of the kinds that move a room up (MSC4186), among the last
        // few; a reaction or a profile change does not.
        let (bump, latest) = if membership == "join" {
            let recent = state
                .store
                .get_room_events_before(room_id.as_str(), now + 1, BUMP_LOOKBACK)
                .await?;
            let bump = recent
                .iter()
                .find(|r| BUMP_TYPES.contains(&r.event_type.as_str()))
                .and_then(|r| r.stream_ordering)
                .unwrap_or(member_position)
                .max(member_position);
            let latest = recent
                .first()
                .and_then(|r| r.stream_ordering)
                .unwrap_or(member_position);
            (bump, latest)
        } else {
            (member_position, member_position)
        };
        let room_type = state_content(state, &room_id, "m.room.create", "")
            .await?
            .and_then(|(_, c)| c["type"].as_str().map(str::to_owned));
        let encrypted = state
            .rooms
            .current_state_event_id(&room_id, "m.room.encryption", "")
            .await?
            .is_some();
        seen.insert(room_id.clone());
        out.push(Candidate {
            room_id,
            membership,
            bump,
            latest,
            member_position,
            remote: None,
            room_type,
            encrypted,
        });
    }
    for pending in state
        .store
        .list_remote_invites(user.user_id.as_str())
        .await?
    {
        let Ok(room_id) = OwnedRoomId::try_from(pending.room_id.as_str()) else {
            continue;
        };
        if pending.membership != "invite" || seen.contains(&room_id) {
            continue;
        }
        out.push(Candidate {
            room_id,
            membership: "invite".into(),
            // Invites from elsewhere sort first among the newest.
            bump: now,
            latest: now,
            member_position: now,
            remote: Some(pending),
            room_type: None,
            encrypted: false,
        });
    }
    out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(out)
}

fn passes(
    filters: Option<&v5::request::ListFilters>,
    room: &Candidate,
    dms: &HashSet<String>,
) -> bool {
    if !matches!(room.membership.as_str(), "join" | "invite") {
        return false;
    }
    let Some(f) = filters else {
        return true;
    };
    if f.is_invite
        .is_some_and(|want| want != (room.membership == "invite"))
    {
        return false;
    }
    if f.is_dm
        .is_some_and(|want| want != dms.contains(room.room_id.as_str()))
    {
        return false;
    }
    if f.is_encrypted.is_some_and(|want| want != room.encrypted) {
        return false;
    }
    let kind = room.room_type.as_deref();
    if !f.room_types.is_empty() && !f.room_types.iter().any(|t| t.as_str() == kind) {
        return false;
    }
    !f.not_room_types.iter().any(|t| t.as_str() == kind)
}

/// The rooms `m.direct` names (direct chats).
async fn direct_rooms(state: &AppState, user: &ClientUser) -> Result<HashSet<String>, ApiError> {
    let content = state
        .store
        .get_account_data(user.user_id.as_str(), "", "m.direct")
        .await?
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null);
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect())
}

/// Whether a state slot is asked for (`*` for any type or key, `$ME` for the user, `$LAZY`
/// members: the timeline's senders).
fn wanted_slot(
    required: &[(String, String)],
    kind: &str,
    key: &str,
    user: &str,
    senders: &HashSet<&str>,
) -> bool {
    required.iter().any(|(k, sk)| {
        (k == "*" || k == kind)
            && (sk == "*"
                || sk == key
                || (sk == "$ME" && key == user)
                || (sk == "$LAZY"
                    && kind == "m.room.member"
                    && (senders.contains(key) || key == user)))
    })
}

/// One response: the body (without `pos`), the next snapshot, whether anything is new.
async fn build(
    state: &AppState,
    user: &ClientUser,
    body: &v5::Request,
    snapshot: &Snapshot,
    (now, now_aux, counted): (i64, i64, i64),
) -> Result<(Value, Snapshot, bool), ApiError> {
    let initial_connection = body.pos.is_none();
    let rooms = candidates(state, user, now).await?;
    let dms = direct_rooms(state, user).await?;
    let mut wanted: HashMap<OwnedRoomId, Wanted> = HashMap::new();
    let mut lists = serde_json::Map::new();
    let mut counts = BTreeMap::new();
    for (name, list) in &body.lists {
        let matching: Vec<&Candidate> = rooms
            .iter()
            .filter(|r| passes(list.filters.as_ref(), r, &dms))
            .collect();
        counts.insert(name.clone(), matching.len());
        lists.insert(name.clone(), json!({"count": matching.len()}));
        for (start, end) in &list.ranges {
            let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
            let end = usize::try_from(u64::from(*end)).unwrap_or(usize::MAX);
            for room in matching
                .iter()
                .skip(start)
                .take(end.saturating_sub(start).saturating_add(1))
            {
                let w = wanted.entry(room.room_id.clone()).or_default();
                w.merge(
                    &list.room_details.required_state,
                    u64::from(list.room_details.timeline_limit),
                );
                w.lists.insert(name.clone());
            }
        }
    }
    for (room_id, sub) in &body.room_subscriptions {
        if rooms
            .iter()
            .any(|r| &r.room_id == room_id && matches!(r.membership.as_str(), "join" | "invite"))
        {
            let w = wanted.entry(room_id.clone()).or_default();
            w.merge(&sub.required_state, u64::from(sub.timeline_limit));
            w.subscribed = true;
        }
    }
    let mut next = snapshot.clone();
    next.stream = now;
    next.aux = now_aux;
    next.counts = counts.clone();
    let mut out_rooms = serde_json::Map::new();
    for room in &rooms {
        let sent = snapshot.rooms.get(&room.room_id);
        if matches!(room.membership.as_str(), "leave" | "ban") {
            // Left since the client last had the room: the events up to the leave, once; a
            // room the user was only invited to shows just the leave (no history they never
            // could read).
            if let Some(sent) = sent
                && room.member_position > sent.position
                && sent.membership != "join"
            {
                let Some((leave, _)) =
                    state_content(state, &room.room_id, "m.room.member", user.user_id.as_str())
                        .await?
                else {
                    next.rooms.remove(&room.room_id);
                    continue;
                };
                out_rooms.insert(
                    room.room_id.to_string(),
                    json!({"timeline": [super::rooms::client_event(&leave)], "limited": false,
                           "num_live": 1, "bump_stamp": room.bump}),
                );
            } else if let Some(sent) = sent
                && room.member_position > sent.position
            {
                let limit = MAX_TIMELINE.min(20);
                let mut rows = state
                    .store
                    .get_room_events_before(
                        room.room_id.as_str(),
                        room.member_position + 1,
                        limit + 1,
                    )
                    .await?;
                rows.retain(|r| r.stream_ordering.unwrap_or(0) > sent.position);
                let limited = rows.len() as i64 > limit;
                rows.truncate(limit as usize);
                rows.reverse();
                let prev_batch = rows
                    .first()
                    .and_then(|r| r.stream_ordering)
                    .map(|s| format!("s{}", s - 1));
                let timeline = events_of(state, &rows, &user.user_id).await?;
                out_rooms.insert(
                    room.room_id.to_string(),
                    json!({"timeline": timeline, "limited": limited, "prev_batch": prev_batch,
                           "num_live": timeline.len(), "bump_stamp": room.bump}),
                );
            }
            next.rooms.remove(&room.room_id);
            continue;
        }
        let Some(w) = wanted.get(&room.room_id) else {
            continue;
        };
        // New to the client (or its membership changed): everything. Else: the events since,
        // and the state of patterns asked for the first time. Fewer patterns or another
        // timeline limit change nothing the client has.
        let sent = sent.filter(|s| s.membership == room.membership);
        let no_lazy = HashSet::new();
        let known = Known {
            since: sent.map(|s| s.position),
            required: sent.map(|s| s.required.as_slice()).unwrap_or(&[]),
            lazy_sent: sent.map(|s| &s.lazy_sent).unwrap_or(&no_lazy),
            expand: sent.is_some_and(|s| w.timeline_limit > s.timeline_limit),
        };
        let new_patterns = w.required_state.iter().any(|p| !known.required.contains(p));
        // An invite from another server does not change while it stands: sent once.
        let unchanged = match &room.remote {
            Some(_) => sent.is_some(),
            None => {
                sent.is_some_and(|s| room.latest <= s.position) && !new_patterns && !known.expand
            }
        };
        if unchanged {
            if let Some(kept) = next.rooms.get_mut(&room.room_id) {
                kept.timeline_limit = w.timeline_limit;
                // The push rules saw more of the room since its counts were sent: the counts
                // alone, when they changed.
                if room.remote.is_none() && room.latest > kept.counted && counted > kept.counted {
                    kept.counted = counted;
                    let counts =
                        unread_counts(state, &user.user_id, &room.room_id, room.member_position)
                            .await?;
                    if counts != kept.counts {
                        kept.counts = counts;
                        out_rooms.insert(
                            room.room_id.to_string(),
                            json!({"notification_count": counts.0, "highlight_count": counts.1,
                                   "bump_stamp": room.bump}),
                        );
                    }
                }
            }
            continue;
        }
        let mut required = known.required.to_vec();
        for pattern in &w.required_state {
            if !required.contains(pattern) {
                required.push(pattern.clone());
            }
        }
        if required.len() > MAX_PATTERNS {
            required.drain(..required.len() - MAX_PATTERNS);
        }
        let (entry, lazy_sent) = if room.membership == "invite" {
            (invite_room(state, user, room).await?, HashSet::new())
        } else {
            joined_room(state, user, room, w, &known, now).await?
        };
        let counts = (
            entry["notification_count"].as_i64().unwrap_or(0),
            entry["highlight_count"].as_i64().unwrap_or(0),
        );
        out_rooms.insert(room.room_id.to_string(), entry);
        next.rooms.insert(
            room.room_id.clone(),
            RoomSent {
                position: now.max(room.latest),
                required,
                lazy_sent,
                timeline_limit: w.timeline_limit,
                membership: room.membership.clone(),
                counts,
                counted,
            },
        );
    }

    // Extensions.
    let since_aux = (!initial_connection).then_some(snapshot.aux);
    let ext = &body.extensions;
    let mut extensions = serde_json::Map::new();
    let mut ext_updates = false;
    let for_extension = |lists: &Option<Vec<String>>,
                         rooms: &Option<Vec<v5::request::ExtensionRoomConfig>>,
                         room_id: &RoomId,
                         w: &Wanted| {
        let by_list = match lists {
            None => true,
            Some(names) => names.iter().any(|n| n == "*" || w.lists.contains(n)),
        };
        let by_room = match rooms {
            None => w.subscribed,
            Some(configs) => configs.iter().any(|c| match c {
                v5::request::ExtensionRoomConfig::AllSubscribed => w.subscribed,
                v5::request::ExtensionRoomConfig::Room(r) => r == room_id,
                _ => false,
            }),
        };
        (by_list && !w.lists.is_empty()) || by_room
    };
    if ext.to_device.enabled == Some(true) {
        let delivered = ext
            .to_device
            .since
            .as_deref()
            .and_then(|s| s.parse::<i64>().ok());
        let events = to_device_events(state, user, delivered, now_aux).await?;
        ext_updates |= !events.is_empty();
        extensions.insert(
            "to_device".into(),
            json!({"next_batch": now_aux.to_string(), "events": events}),
        );
    }
    if ext.e2ee.enabled == Some(true) {
        let mut devices = DeviceListDelta::new(state, &user.user_id, since_aux, now_aux).await?;
        let mut joined = Vec::new();
        for room in rooms.iter() {
            let Some(current) = state.rooms.current_state(&room.room_id).await? else {
                continue;
            };
            match room.membership.as_str() {
                "join" => {
                    joined.push(room.room_id.clone());
                    if !initial_connection {
                        let changed_since = room.member_position > snapshot.stream;
                        devices
                            .joined_room(
                                state,
                                &user.user_id,
                                &room.room_id,
                                &current,
                                (Some(snapshot.stream), now),
                                (changed_since, None),
                            )
                            .await?;
                    }
                }
                "leave" | "ban"
                    if !initial_connection && room.member_position > snapshot.stream =>
                {
                    devices.left_room(state, &current).await?;
                }
                _ => {}
            }
        }
        let (changed, left) = devices.finish(state, &user.user_id, &joined).await?;
        ext_updates |= !changed.is_empty() || !left.is_empty();
        let (one_time_keys, fallback_types) = key_counts(state, user).await?;
        extensions.insert(
            "e2ee".into(),
            json!({"device_lists": {"changed": changed, "left": left},
                   "device_one_time_keys_count": one_time_keys,
                   "device_unused_fallback_key_types": fallback_types}),
        );
    }
    if ext.account_data.enabled == Some(true) {
        // Skipped when the aux marks show nothing of the user's came since (see sync).
        let mark = crate::ephemeral::Mark::AccountData(user.user_id.to_string());
        let data = if state.ephemeral.unchanged_since(&mark, since_aux) {
            Vec::new()
        } else {
            state
                .store
                .list_account_data_since(user.user_id.as_str(), since_aux.unwrap_or(0))
                .await?
        };
        let mut global: Vec<Value> = data
            .iter()
            .filter(|(room, _, _)| room.is_empty())
            .map(|(_, k, c)| data_event(k, c))
            .collect();
        if initial_connection
            && !data
                .iter()
                .any(|(r, k, _)| r.is_empty() && k == crate::api::client::push::PUSH_RULES)
        {
            global.push(json!({"type": crate::api::client::push::PUSH_RULES,
                "content": crate::api::client::push::default_content(&user.user_id)}));
        }
        let mut per_room = serde_json::Map::new();
        // A room new to the client gets all its account data (tags, read markers), not only
        // what changed since the connection's last response.
        let initial_rooms: HashSet<&str> = out_rooms
            .iter()
            .filter(|(_, r)| r["initial"] == true)
            .map(|(id, _)| id.as_str())
            .collect();
        let all = if initial_connection || initial_rooms.is_empty() {
            Vec::new()
        } else {
            state
                .store
                .list_account_data_since(user.user_id.as_str(), 0)
                .await?
        };
        let earlier = all
            .iter()
            .filter(|(r, _, _)| initial_rooms.contains(r.as_str()))
            .filter(|entry| !data.contains(entry));
        for (room, kind, content) in data.iter().filter(|(r, _, _)| !r.is_empty()).chain(earlier) {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            let shown = wanted.get(&room_id).is_some_and(|w| {
                for_extension(
                    &ext.account_data.lists,
                    &ext.account_data.rooms,
                    &room_id,
                    w,
                )
            });
            if shown
                && let Some(list) = per_room
                    .entry(room.clone())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
            {
                list.push(data_event(kind, content));
            }
        }
        ext_updates |= !global.is_empty() || !per_room.is_empty();
        extensions.insert(
            "account_data".into(),
            json!({"global": global, "rooms": per_room}),
        );
    }
    if ext.receipts.enabled == Some(true) || ext.typing.enabled == Some(true) {
        let mut receipts = serde_json::Map::new();
        let mut typing = serde_json::Map::new();
        // Only for joined rooms: an invitee does not see who reads or types.
        let joined: HashSet<&OwnedRoomId> = rooms
            .iter()
            .filter(|r| r.membership == "join")
            .map(|r| &r.room_id)
            .collect();
        for (room_id, w) in wanted.iter().filter(|(r, _)| joined.contains(r)) {
            // A room new to the client gets all its receipts.
            let room_since = if out_rooms
                .get(room_id.as_str())
                .is_some_and(|r| r["initial"] == true)
            {
                None
            } else {
                since_aux
            };
            if ext.receipts.enabled == Some(true)
                && for_extension(&ext.receipts.lists, &ext.receipts.rooms, room_id, w)
                && let Some(event) = receipt_event(state, room_id, room_since).await?
            {
                receipts.insert(room_id.to_string(), event);
            }
            if ext.typing.enabled == Some(true)
                && for_extension(&ext.typing.lists, &ext.typing.rooms, room_id, w)
                && let Some(users) = state.ephemeral.typing_since(room_id, room_since)
            {
                typing.insert(
                    room_id.to_string(),
                    json!({"type": "m.typing", "content": {"user_ids": users}}),
                );
            }
        }
        ext_updates |= !receipts.is_empty() || !typing.is_empty();
        if ext.receipts.enabled == Some(true) {
            extensions.insert("receipts".into(), json!({"rooms": receipts}));
        }
        if ext.typing.enabled == Some(true) {
            extensions.insert("typing".into(), json!({"rooms": typing}));
        }
    }
    let has_updates = !out_rooms.is_empty() || ext_updates || counts != snapshot.counts;
    let response = json!({
        "lists": lists,
        "rooms": out_rooms,
        "extensions": extensions,
    });
    Ok((response, next, has_updates))
}

/// An invited room: what the invite showed.
async fn invite_room(
    state: &AppState,
    user: &ClientUser,
    room: &Candidate,
) -> Result<Value, ApiError> {
    let events = match &room.remote {
        Some(pending) => {
            let mut events: Vec<Value> =
                serde_json::from_str(&pending.invite_state).unwrap_or_default();
            if let Ok(ours) = serde_json::from_str::<Value>(&pending.event_json) {
                events.push(json!({"type": ours["type"], "state_key": ours["state_key"],
                    "sender": ours["sender"], "content": ours["content"]}));
            }
            events
        }
        None => {
            let Some((invite, content)) =
                state_content(state, &room.room_id, "m.room.member", user.user_id.as_str()).await?
            else {
                return Ok(json!({"initial": true, "invite_state": []}));
            };
            let mut events = stripped_state(state, &room.room_id, &invite.sender).await?;
            events.push(json!({"type": "m.room.member", "state_key": user.user_id,
                "sender": invite.sender, "content": content}));
            events
        }
    };
    let name = events
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .and_then(|e| e["content"]["name"].as_str())
        .map(str::to_owned);
    let mut entry = json!({"initial": true, "invite_state": events, "bump_stamp": room.bump});
    if let Some(name) = name {
        entry["name"] = json!(name);
    }
    Ok(entry)
}

/// A joined room: everything when the client has none of it, else what came after what it has;
/// also the `$LAZY` members the client now has.
async fn joined_room(
    state: &AppState,
    user: &ClientUser,
    room: &Candidate,
    w: &Wanted,
    known: &Known<'_>,
    now: i64,
) -> Result<(Value, HashSet<String>), ApiError> {
    let room_id = &room.room_id;
    let since = known.since;
    let limit = w.timeline_limit.max(0);
    let mut rows = state
        .store
        .get_room_events_before(room_id.as_str(), now + 1, limit + 1)
        .await?;
    if !known.expand {
        rows.retain(|r| since.is_none_or(|s| r.stream_ordering.unwrap_or(0) > s));
    }
    let limited = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    rows.reverse();
    let live = rows
        .iter()
        .filter(|r| since.is_some_and(|s| r.stream_ordering.unwrap_or(0) > s))
        .count();
    let prev_batch = rows
        .first()
        .and_then(|r| r.stream_ordering)
        .map(|s| format!("s{}", s - 1))
        .unwrap_or(format!("s{now}"));
    let senders: HashSet<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
    // The state slots to send (the timeline's state events too: clients take the room's state
    // from here): all the wanted ones for a room new to the client; else the ones that changed
    // since (when too many changed, all of them again), those of patterns asked for the first
    // time, and timeline senders not yet sent for `$LAZY`.
    let changed_slots: Option<HashSet<(String, String)>> = match since {
        None => None,
        Some(s) => {
            let changes = state
                .store
                .get_room_events_after(room_id.as_str(), s, STATE_DELTA_CAP)
                .await?;
            if changes.len() as i64 >= STATE_DELTA_CAP {
                None
            } else {
                Some(
                    changes
                        .iter()
                        .filter_map(|r| Some((r.event_type.clone(), r.state_key.clone()?)))
                        .collect(),
                )
            }
        }
    };
    let new_patterns: Vec<(String, String)> = w
        .required_state
        .iter()
        .filter(|p| !known.required.contains(p))
        .cloned()
        .collect();
    let me = user.user_id.as_str();
    let mut lazy_sent = known.lazy_sent.clone();
    let current = current_state_events(state, room_id).await?;
    let mut required_state = Vec::new();
    for event in &current {
        let kind = event.kind.to_string();
        let key = event.state_key.as_deref().unwrap_or("");
        if !wanted_slot(&w.required_state, &kind, key, me, &senders) {
            continue;
        }
        let lazy_new =
            kind == "m.room.member" && senders.contains(key) && !known.lazy_sent.contains(key);
        let send = match &changed_slots {
            None => true,
            Some(changed) => {
                changed.contains(&(kind.clone(), key.to_owned()))
                    || lazy_new
                    || wanted_slot(&new_patterns, &kind, key, me, &senders)
            }
        };
        if send {
            if kind == "m.room.member" && senders.contains(key) {
                lazy_sent.insert(key.to_owned());
            }
            required_state.push(super::rooms::client_event(event));
        }
    }
    let timeline = events_of(state, &rows, &user.user_id).await?;
    let (notifications, highlights) =
        unread_counts(state, &user.user_id, room_id, room.member_position).await?;
    let (joined_count, _) = state
        .rooms
        .member_summary(room_id)
        .await?
        .unwrap_or_default();
    let mut entry = json!({
        "timeline": timeline,
        "required_state": required_state,
        "prev_batch": prev_batch,
        "limited": limited,
        "num_live": live,
        "joined_count": joined_count,
        "notification_count": notifications,
        "highlight_count": highlights,
        "bump_stamp": room.bump,
    });
    if since.is_none() {
        entry["initial"] = json!(true);
    } else if known.expand {
        entry["expanded_timeline"] = json!(true);
    }
    let name = current
        .iter()
        .find(|e| e.kind.to_string() == "m.room.name")
        .and_then(|e| serde_json::from_str::<Value>(e.content.get()).ok())
        .and_then(|c| {
            c["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        });
    match name {
        Some(name) => entry["name"] = json!(name),
        None if since.is_none() => {
            // No name: the client names the room after up to five other members.
            let heroes: Vec<Value> = current
                .iter()
                .filter(|e| e.kind.to_string() == "m.room.member")
                .filter(|e| e.state_key.as_deref() != Some(user.user_id.as_str()))
                .filter_map(|e| {
                    let c: Value = serde_json::from_str(e.content.get()).ok()?;
                    matches!(c["membership"].as_str(), Some("join" | "invite"))
                        .then(|| json!({"user_id": e.state_key, "displayname": c["displayname"]}))
                })
                .take(5)
                .collect();
            entry["heroes"] = json!(heroes);
        }
        None => {}
    }
    if let Some(avatar) = current
        .iter()
        .find(|e| e.kind.to_string() == "m.room.avatar")
        .and_then(|e| serde_json::from_str::<Value>(e.content.get()).ok())
        .and_then(|c| c["url"].as_str().map(str::to_owned))
    {
        entry["avatar"] = json!(avatar);
    }
    Ok((entry, lazy_sent))
}
