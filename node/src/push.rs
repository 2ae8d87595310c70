//! Push (spec: client-server API "Push notifications", Push Gateway API).
//!
//! ```text
//!  room writer commits -> position watch -> evaluate_loop: for each new timeline event and each
//!    local member of its room (not the sender), the member's push rules (ruma's evaluator)
//!    -> event_push_actions (unread counts, /notifications) + push_queue rows for the
//!       member's pushers, with the worker's position, in one transaction written by the room
//!       writer (SQLite has one writer at a time: a second would make sends wait for its lock)
//!  deliver_loop: due push_queue rows -> POST <pusher url> (/_matrix/push/v1/notify)
//!    -> 200: row deleted (rejected pushkeys: pusher deleted); else retried with backoff
//! ```
//!
//! Evaluation runs beside the append path, not in it: sending stays as fast as before, and a
//! sync never waits for it. A sync's counts hold for the events the worker had evaluated when
//! it answered (the token carries that position); when the worker gets further, it wakes the
//! syncs of the members an event notifies, and their next response carries the room's new
//! counts (sliding sync: the room with its counts alone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use ruma::push::{
    Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;
use unitas_federation::discovery::{FilteringResolver, IpFilter};
use unitas_storage::{EventRow, PushAction, PushStore, PushWrite, Pusher, QueuedPush};

use crate::api::restricted::{member_event, power_levels, state_content};
use crate::config::PushConfig;
use crate::node::now_ms;
use crate::state::AppState;

/// Events evaluated per transaction.
const BATCH: i64 = 200;
/// Rooms whose members and power levels are kept between batches.
const ROOM_CACHE: usize = 1_000;
/// Longest wait between two delivery attempts of one notification.
const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
/// Bytes of a gateway's answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// The path every push gateway URL must have (spec).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The push worker's shared half: how far evaluation got, and the delivery client.
#[derive(Debug)]
pub struct Push {
    /// The last stream position evaluated (`i64::MIN` until the worker starts).
    evaluated: AtomicI64,
    /// Bumped when a user's rules or pushers change (the worker drops its copies).
    generation: AtomicU64,
    queued: Notify,
    http: reqwest::Client,
    filter: IpFilter,
    config: PushConfig,
}

impl Push {
    /// The push state for `config` (the delivery client honours its address filter and TLS
    /// setting).
    pub fn new(config: &PushConfig) -> Result<Push, String> {
        let filter = IpFilter::new(
            config.ip_range_allowlist.clone(),
            config.ip_range_denylist.clone(),
        );
        let resolver = FilteringResolver::new(filter.clone())?;
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .danger_accept_invalid_certs(!config.verify_tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("Unitas/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Push {
            evaluated: AtomicI64::new(i64::MIN),
            generation: Default::default(),
            queued: Notify::new(),
            http,
            filter,
            config: config.clone(),
        })
    }

    /// Tells the worker that some user's push rules or pushers changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How far the rules have seen the event stream: counts read now include every event up
    /// to it. `None` before the worker started.
    pub fn evaluated(&self) -> Option<i64> {
        let position = self.evaluated.load(Ordering::SeqCst);
        (position != i64::MIN).then_some(position)
    }

    /// Checks a pusher's URL: `https`, the spec's notify path, and not an address the filter
    /// denies (host names are checked again when resolved).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "data.url is not a URL".to_owned())?;
        if parsed.scheme() != "https" {
            return Err("data.url must be an https URL".into());
        }
        if parsed.path() != NOTIFY_PATH {
            return Err(format!("data.url must have the path {NOTIFY_PATH}"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| "data.url has no host".to_owned())?;
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            && !self.filter.allows(ip)
        {
            return Err("data.url points at an address this server does not call".into());
        }
        Ok(parsed)
    }
}

/// A local member as the rules see them in one room.
#[derive(Clone)]
struct Member {
    user: OwnedUserId,
    ctx: PushConditionRoomCtx,
    /// Stream position of their membership: events before it were not theirs to see.
    since: i64,
}

/// The unnamed member whose default rules give an event's verdict for everyone without an
/// exception (no real user: it is never mentioned, invited or the sender).
const ANYONE: &str = "@_:unitas.invalid";

/// One room as the rules need it.
#[derive(Clone)]
struct RoomContext {
    /// The unnamed member's rule context.
    common: PushConditionRoomCtx,
    /// Local joined members, each with their rule context (display name, member count, power
    /// levels).
    members: Vec<Member>,
    joined: usize,
    power: Option<PushConditionPowerLevelsCtx>,
    name: Option<String>,
}

impl RoomContext {
    /// Adds `user` as a member when `content` (their membership) is a join.
    fn add_joined(&mut self, room_id: &RoomId, user: OwnedUserId, content: &Value, since: i64) {
        if content["membership"] != "join" {
            return;
        }
        let name = content["displayname"]
            .as_str()
            .unwrap_or(user.localpart())
            .to_owned();
        let ctx = self.member_ctx(room_id, &user, name);
        self.members.push(Member { user, ctx, since });
    }

    fn member_ctx(
        &self,
        room_id: &RoomId,
        user: &OwnedUserId,
        name: String,
    ) -> PushConditionRoomCtx {
        let ctx = PushConditionRoomCtx::new(
            room_id.to_owned(),
            ruma::UInt::try_from(self.joined).unwrap_or(ruma::UInt::MAX),
            user.clone(),
            name,
        );
        match &self.power {
            Some(power) => ctx.with_power_levels(power.clone()),
            None => ctx,
        }
    }
}

async fn room_context(
    state: &AppState,
    room_id: &RoomId,
) -> Result<Option<RoomContext>, crate::api::ApiError> {
    let Some((joined, local)) = state.rooms.member_summary(room_id).await? else {
        return Ok(None);
    };
    let power = power_levels(state, room_id).await?.map(Into::into);
    let name = state_content(state, room_id, "m.room.name", "")
        .await?
        .and_then(|(_, c)| c["name"].as_str().map(str::to_owned));
    let anyone = OwnedUserId::try_from(ANYONE).map_err(|e| crate::api::ApiError::internal(&e))?;
    let mut context = RoomContext {
        common: PushConditionRoomCtx::new(
            room_id.to_owned(),
            ruma::UInt::MIN,
            anyone,
            String::new(),
        ),
        members: Vec::new(),
        joined,
        power,
        name,
    };
    for user in local {
        let Some((_, content, since)) = member_event(state, room_id, &user).await? else {
            continue;
        };
        context.add_joined(room_id, user, &content, since);
    }
    context.common = context.member_ctx(room_id, &context.common.user_id.clone(), String::new());
    Ok(Some(context))
}

/// Brings a cached room up to date after a membership event of `user`: the joined count, and
/// the user's own entry when they are local (a room's context is read member by member, so
/// reading it again after every join made a join storm quadratic). False when the room is not
/// cached in a form this can update (the caller drops it).
async fn member_changed(
    state: &AppState,
    room_id: &OwnedRoomId,
    user: &str,
    caches: &mut Caches,
) -> Result<bool, crate::api::ApiError> {
    if !caches.rooms.contains_key(room_id) {
        return Ok(true);
    }
    let Ok(user) = OwnedUserId::try_from(user) else {
        return Ok(false);
    };
    let Some(joined) = state.rooms.joined_count(room_id).await? else {
        return Ok(false);
    };
    let local = state.rooms.is_local_server(user.server_name().as_str());
    let entry = if local {
        member_event(state, room_id, &user).await?
    } else {
        None
    };
    let Some(cached) = caches.rooms.get_mut(room_id) else {
        return Ok(true);
    };
    let context = Arc::make_mut(cached);
    // Only local members have entries.
    if local {
        context.members.retain(|m| m.user != user);
        if let Some((_, content, since)) = entry {
            context.add_joined(room_id, user, &content, since);
        }
    }
    if context.joined != joined {
        context.joined = joined;
        let count = ruma::UInt::try_from(joined).unwrap_or(ruma::UInt::MAX);
        context.common.member_count = count;
        for member in &mut context.members {
            member.ctx.member_count = count;
        }
    }
    Ok(true)
}

/// The gateway's `tweaks` from a rule's actions (`set_tweak` -> value; highlight without a
/// value means true).
fn tweaks(actions: &Value) -> Value {
    let mut tweaks = serde_json::Map::new();
    for action in actions.as_array().into_iter().flatten() {
        if let Some(tweak) = action["set_tweak"].as_str() {
            let value = action.get("value").cloned().unwrap_or(Value::Bool(true));
            tweaks.insert(tweak.to_owned(), value);
        }
    }
    Value::Object(tweaks)
}

/// The `/_matrix/push/v1/notify` body of one event for one pusher.
struct Notification<'a> {
    event: &'a Value,
    room_name: Option<&'a str>,
    sender_name: Option<&'a str>,
    user: &'a UserId,
    actions: &'a Value,
}

fn notify_body(pusher: &Pusher, n: &Notification<'_>) -> Value {
    let mut data: serde_json::Map<String, Value> =
        serde_json::from_str(&pusher.data).unwrap_or_default();
    data.remove("url");
    let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
    let tweaks = tweaks(n.actions);
    let high = tweaks.get("sound").is_some() || tweaks["highlight"] == true;
    let device = json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.created_ts / 1000,
        "data": data,
        "tweaks": tweaks,
    });
    let mut notification = json!({
        "event_id": n.event["event_id"],
        "room_id": n.event["room_id"],
        // Filled in when sent, so the badge is current then.
        "counts": {"unread": 0},
        "devices": [device],
        "prio": if high { "high" } else { "low" },
    });
    if !event_id_only {
        let fields = [
            ("type", n.event["type"].clone()),
            ("sender", n.event["sender"].clone()),
            ("content", n.event["content"].clone()),
        ];
        for (key, value) in fields {
            notification[key] = value;
        }
        if let Some(name) = n.sender_name {
            notification["sender_display_name"] = json!(name);
        }
        if let Some(name) = n.room_name {
            notification["room_name"] = json!(name);
        }
        if n.event["type"] == "m.room.member" {
            notification["user_is_target"] = json!(n.event["state_key"] == n.user.as_str());
        }
    }
    json!({ "notification": notification })
}

/// Evaluates new events for as long as the node runs.
pub async fn evaluate_loop(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut committed = state.rooms.subscribe();
    let mut position = match state.store.get_push_position().await {
        Ok(Some(p)) => p,
        // First start: rules apply from now on (history is not evaluated).
        _ => *committed.borrow(),
    };
    let _ = state
        .rooms
        .write_push(PushWrite {
            position: Some(position),
            ..Default::default()
        })
        .await;
    state.push.evaluated.store(position, Ordering::SeqCst);
    let mut caches = Caches::default();
    loop {
        let target = *committed.borrow_and_update();
        match evaluate_batch(&state, position, &mut caches).await {
            Ok(Some(done)) => {
                position = done.last;
                // A batch that was not full held everything committed when it was read, and
                // `target` was read before: caught up to it without asking again.
                let caught_up = !done.full;
                if caught_up && target > position {
                    position = target;
                }
                state.push.evaluated.store(position, Ordering::SeqCst);
                // Their counts changed: their syncs answer again (after the position moved,
                // so the woken sync reads counts that include the batch).
                state.rooms.wake(done.notified.iter());
                if done.queued {
                    state.push.queued.notify_one();
                }
                if !caught_up {
                    // A long catch-up still stops at shutdown (its position is saved).
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => return,
                        () = std::future::ready(()) => continue,
                    }
                }
            }
            Ok(None) => {
                // Nothing after `position` up to `target` (read before the query): caught up.
                if target > position {
                    position = target;
                    state.push.evaluated.store(position, Ordering::SeqCst);
                }
            }
            Err(error) => {
                tracing::warn!(?error, "push evaluation failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            changed = committed.changed() => if changed.is_err() { return },
        }
    }
}

/// What one batch of evaluation did.
struct Evaluated {
    /// The last position evaluated.
    last: i64,
    /// The batch had as many events as asked for: more may follow.
    full: bool,
    /// The users some event notified.
    notified: HashSet<OwnedUserId>,
    /// Notifications were queued for delivery.
    queued: bool,
}

/// Evaluates the events after `after` (`None` when there were none).
async fn evaluate_batch(
    state: &AppState,
    after: i64,
    caches: &mut Caches,
) -> Result<Option<Evaluated>, crate::api::ApiError> {
    let events = state.store.list_stream_events(after, BATCH).await?;
    let Some(last) = events.last().and_then(|e| e.stream_ordering) else {
        return Ok(None);
    };
    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= BATCH;
    let generation = state.push.generation();
    if generation != caches.generation {
        caches.rulesets.clear();
        caches.pushers.clear();
        caches.generation = generation;
    }
    let mut actions = Vec::new();
    let mut queue = Vec::new();
    let mut notified = HashSet::new();
    for row in &events {
        let Ok(room_id) = OwnedRoomId::try_from(row.room_id.as_str()) else {
            continue;
        };
        if caches.rooms.len() > ROOM_CACHE {
            caches.rooms.clear();
        }
        let context = match caches.rooms.get(&room_id) {
            Some(c) => c.clone(),
            None => match room_context(state, &room_id).await? {
                Some(c) => {
                    let c = Arc::new(c);
                    caches.rooms.insert(room_id.clone(), c.clone());
                    c
                }
                None => continue,
            },
        };
        evaluate_event(
            state,
            row,
            &room_id,
            &context,
            caches,
            (&mut actions, &mut queue, &mut notified),
        )
        .await?;
        // A state event may change members, names or power levels.
        if let Some(user) = &row.state_key {
            drop(context);
            if !(row.event_type == "m.room.member"
                && member_changed(state, &room_id, user, caches).await?)
            {
                caches.rooms.remove(&room_id);
            }
        }
    }
    let queued = !queue.is_empty();
    state
        .rooms
        .write_push(PushWrite {
            actions,
            queue,
            position: Some(last),
        })
        .await?;
    Ok(Some(Evaluated {
        last,
        full,
        notified,
        queued,
    }))
}

/// A local user this event invites (not a member yet, but the invite is for them).
fn invitee(
    state: &AppState,
    row: &EventRow,
    event: &FlattenedJson,
    room_id: &RoomId,
    context: &RoomContext,
) -> Option<Member> {
    if row.event_type != "m.room.member" || event.get_str("content.membership") != Some("invite") {
        return None;
    }
    let user = OwnedUserId::try_from(row.state_key.as_deref()?).ok()?;
    if !state.rooms.is_local_server(user.server_name().as_str()) {
        return None;
    }
    let ctx = context.member_ctx(room_id, &user, user.localpart().to_owned());
    Some(Member {
        user,
        ctx,
        since: row.stream_ordering.unwrap_or(0),
    })
}

async fn evaluate_event(
    state: &AppState,
    row: &EventRow,
    room_id: &OwnedRoomId,
    context: &RoomContext,
    caches: &mut Caches,
    (actions, queue, notified): (
        &mut Vec<PushAction>,
        &mut Vec<QueuedPush>,
        &mut HashSet<OwnedUserId>,
    ),
) -> Result<(), crate::api::ApiError> {
    let Some(position) = row.stream_ordering else {
        return Ok(());
    };
    let Ok(raw) = serde_json::value::RawValue::from_string(row.json.clone()) else {
        return Ok(());
    };
    let event = FlattenedJson::from_raw(&Raw::<Value>::from_json(raw));
    // Events in a thread count towards the thread (clients may ask for them apart).
    let thread_id = match event.get_str("content.m\\.relates_to.rel_type") {
        Some("m.thread") => event
            .get_str("content.m\\.relates_to.event_id")
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    // The verdict for everyone whose rules are the defaults and who is not named by the event.
    let default_rules = caches.default_rules(&context.common.user_id);
    let common = first_match(&default_rules, &event, &context.common).await;
    let common_json = serde_json::to_value(common).unwrap_or(Value::Array(Vec::new()));
    let common_notify = common.iter().any(Action::should_notify);
    let common_highlight = common.iter().any(Action::is_highlight);
    let mut exceptions = Vec::new();
    let mut client_event = None;
    let invited = invitee(state, row, &event, room_id, context);
    // The invitee is evaluated as such even when the worker already sees them joined.
    let members = context
        .members
        .iter()
        .filter(|m| invited.as_ref().is_none_or(|i| i.user != m.user));
    for member in members.chain(invited.iter()) {
        let user = &member.user;
        // Not the sender's own events, and not events from before the member joined (the
        // worker may be behind the room's current members).
        if user.as_str() == row.sender || member.since > position {
            continue;
        }
        // A member with rules of their own, or named by the event (a mention, an invite), gets
        // their own verdict; it is stored when it differs from the event's.
        let own = caches.own_rules(state, user).await?;
        let named = row.json.contains(user.as_str());
        let (actions_json, notify, highlight) = if own.is_some() || named {
            let rules = own.unwrap_or_else(|| Arc::new(Ruleset::server_default(user)));
            let matched = first_match(&rules, &event, &member.ctx).await;
            let matched_json = serde_json::to_value(matched).unwrap_or(Value::Array(Vec::new()));
            let notify = matched.iter().any(Action::should_notify);
            let highlight = matched.iter().any(Action::is_highlight);
            if matched_json != common_json {
                exceptions.push(PushAction {
                    user_id: user.to_string(),
                    sender: String::new(),
                    room_id: row.room_id.clone(),
                    event_id: row.event_id.clone(),
                    stream_ordering: position,
                    notify,
                    highlight,
                    thread_id: thread_id.clone(),
                    actions: matched_json.to_string(),
                    ts: row.origin_server_ts,
                });
            }
            (matched_json, notify, highlight)
        } else {
            (common_json.clone(), common_notify, common_highlight)
        };
        if notify || highlight {
            notified.insert(user.clone());
        }
        if !notify || !state.push.config.enabled {
            continue;
        }
        let list = caches.pushers(state, user).await?;
        if list.is_empty() {
            continue;
        }
        if client_event.is_none() {
            let sender_name = state_content(state, room_id, "m.room.member", &row.sender)
                .await?
                .and_then(|(_, c)| c["displayname"].as_str().map(str::to_owned));
            let Ok(id) = ruma::OwnedEventId::try_from(row.event_id.as_str()) else {
                continue;
            };
            let Some(pdu) = state.rooms.get_pdu(&id).await? else {
                continue;
            };
            client_event = Some((crate::api::client::rooms::client_event(&pdu), sender_name));
        }
        let Some((event, sender_name)) = &client_event else {
            continue;
        };
        let now = now_ms();
        for pusher in list.iter() {
            let Ok(data) = serde_json::from_str::<Value>(&pusher.data) else {
                continue;
            };
            let Some(url) = data["url"].as_str() else {
                continue;
            };
            let body = notify_body(
                pusher,
                &Notification {
                    event,
                    room_name: context.name.as_deref(),
                    sender_name: sender_name.as_deref(),
                    user,
                    actions: &actions_json,
                },
            );
            queue.push(QueuedPush {
                id: 0,
                user_id: pusher.user_id.clone(),
                app_id: pusher.app_id.clone(),
                pushkey: pusher.pushkey.clone(),
                url: url.to_owned(),
                body: body.to_string(),
                attempts: 0,
                next_attempt_ts: now,
                created_ts: now,
            });
        }
    }
    if common_notify || common_highlight || !exceptions.is_empty() {
        actions.push(PushAction {
            user_id: String::new(),
            sender: row.sender.clone(),
            room_id: row.room_id.clone(),
            event_id: row.event_id.clone(),
            stream_ordering: position,
            notify: common_notify,
            highlight: common_highlight,
            thread_id,
            actions: common_json.to_string(),
            ts: row.origin_server_ts,
        });
        actions.extend(exceptions);
    }
    Ok(())
}

/// What the evaluating worker keeps between batches.
#[derive(Default)]
struct Caches {
    /// Rooms' members and power levels, dropped on the room's next state event.
    rooms: HashMap<OwnedRoomId, Arc<RoomContext>>,
    /// The default rules of the unnamed member.
    default_rules: Option<Arc<Ruleset>>,
    /// Users' own rules (`None`: the defaults) and pushers, dropped when any changes
    /// ([`Push::changed`]).
    rulesets: HashMap<OwnedUserId, Option<Arc<Ruleset>>>,
    pushers: HashMap<OwnedUserId, Arc<Vec<Pusher>>>,
    generation: u64,
}

impl Caches {
    /// The rules the user changed (`None`: the defaults).
    async fn own_rules(
        &mut self,
        state: &AppState,
        user: &OwnedUserId,
    ) -> Result<Option<Arc<Ruleset>>, crate::api::ApiError> {
        if let Some(rules) = self.rulesets.get(user) {
            return Ok(rules.clone());
        }
        let rules = crate::api::client::push::stored_ruleset(state, user)
            .await?
            .map(Arc::new);
        self.rulesets.insert(user.clone(), rules.clone());
        Ok(rules)
    }

    fn default_rules(&mut self, anyone: &UserId) -> Arc<Ruleset> {
        self.default_rules
            .get_or_insert_with(|| Arc::new(Ruleset::server_default(anyone)))
            .clone()
    }

    async fn pushers(
        &mut self,
        state: &AppState,
        user: &OwnedUserId,
    ) -> Result<Arc<Vec<Pusher>>, crate::api::ApiError> {
        if let Some(list) = self.pushers.get(user) {
            return Ok(list.clone());
        }
        let list = Arc::new(state.store.list_pushers(user.as_str()).await?);
        self.pushers.insert(user.clone(), list.clone());
        Ok(list)
    }
}

/// The actions of the first rule of `rules` that applies (none: the event does not notify).
/// The event is flattened once for all the room's members (ruma's `get_actions` would flatten
/// it for each).
async fn first_match<'a>(
    rules: &'a Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> &'a [Action] {
    for rule in rules {
        if rule.applies(event, ctx).await {
            return rule.actions();
        }
    }
    &[]
}

/// What became of one delivery attempt.
enum Delivery {
    /// The gateway took it; these pushkeys it rejected.
    Done(Vec<String>),
    /// Worth trying again.
    Retry(String),
    /// Never going to work (a 4xx, a URL we may not call).
    Drop(String),
}

async fn deliver(push: &Push, item: &QueuedPush) -> Delivery {
    let url = match push.check_url(&item.url) {
        Ok(url) => url,
        Err(reason) => return Delivery::Drop(reason),
    };
    let response = match push
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(item.body.clone())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    let status = response.status();
    if status.is_success() {
        // Only the `rejected` list matters: a gateway's answer is read up to a small size.
        let mut bytes = Vec::new();
        let mut response = response;
        while let Ok(Some(chunk)) = response.chunk().await {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let rejected = body["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        return Delivery::Done(rejected);
    }
    if status.is_client_error()
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        && status != reqwest::StatusCode::REQUEST_TIMEOUT
    {
        return Delivery::Drop(format!("gateway answered {status}"));
    }
    Delivery::Retry(format!("gateway answered {status}"))
}

async fn pusher_exists(
    state: &AppState,
    item: &QueuedPush,
) -> Result<bool, unitas_storage::StorageError> {
    Ok(state
        .store
        .list_pushers(&item.user_id)
        .await?
        .iter()
        .any(|p| p.app_id == item.app_id && p.pushkey == item.pushkey))
}

/// The queued notification with the user's current badge count (rooms with unread
/// notifications).
async fn with_counts(
    state: &AppState,
    item: &QueuedPush,
) -> Result<QueuedPush, crate::api::ApiError> {
    let user = OwnedUserId::try_from(item.user_id.as_str())
        .map_err(|e| crate::api::ApiError::internal(&e))?;
    let unread = crate::api::client::push::unread_rooms(state, &user).await?;
    let mut body: Value = serde_json::from_str(&item.body).unwrap_or(Value::Null);
    if body["notification"].is_object() {
        body["notification"]["counts"]["unread"] = json!(unread);
    }
    Ok(QueuedPush {
        body: body.to_string(),
        ..item.clone()
    })
}

/// The wait before attempt `attempts + 1`: doubling from the configured start, up to an
/// hour, with jitter.
fn backoff_ms(config: &PushConfig, attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    let base = config
        .retry_initial_ms
        .max(1)
        .saturating_mul(1_u64 << exp)
        .min(MAX_BACKOFF_MS);
    let delay = unitas_federation::sender::jittered(Duration::from_millis(base));
    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)
}

/// Delivers queued notifications for as long as the node runs.
pub async fn deliver_loop(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let push = state.push.clone();
    loop {
        let now = now_ms();
        let due = match state.store.list_due_pushes(now, 100).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "reading the push queue failed");
                Vec::new()
            }
        };
        for item in &due {
            // The pusher may have gone since (its device was deleted): nothing to send then.
            let outcome = match pusher_exists(&state, item).await {
                Ok(false) => Delivery::Drop("the pusher is gone".into()),
                Ok(true) => match with_counts(&state, item).await {
                    Ok(item) => deliver(&push, &item).await,
                    Err(error) => Delivery::Retry(format!("{error:?}")),
                },
                Err(error) => Delivery::Retry(error.to_string()),
            };
            let result = match outcome {
                Delivery::Done(rejected) => {
                    for key in rejected {
                        tracing::info!(user = %item.user_id, app = %item.app_id, "gateway rejected a pushkey; pusher removed");
                        let _ = state
                            .store
                            .delete_pusher(&item.user_id, &item.app_id, &key)
                            .await;
                        state.push.changed();
                    }
                    state.store.delete_queued_push(item.id).await
                }
                Delivery::Drop(reason) => {
                    tracing::warn!(user = %item.user_id, %reason, "push notification dropped");
                    state.store.delete_queued_push(item.id).await
                }
                Delivery::Retry(reason) => {
                    let give_up = i64::try_from(push.config.give_up_after_secs)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(1000);
                    if now_ms() - item.created_ts > give_up {
                        tracing::warn!(user = %item.user_id, %reason, "push notification given up");
                        state.store.delete_queued_push(item.id).await
                    } else {
                        tracing::debug!(user = %item.user_id, %reason, "push delivery failed; retrying");
                        let next = now_ms() + backoff_ms(&push.config, item.attempts);
                        state.store.retry_queued_push(item.id, next).await
                    }
                }
            };
            if let Err(error) = result {
                tracing::warn!(%error, "updating the push queue failed");
            }
        }
        if !due.is_empty() {
            continue;
        }
        // Sleep until the next retry is due or something is queued.
        let next = state.store.next_push_due().await.ok().flatten();
        let wait = next
            .map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = &mut shutdown => return,
            _ = push.queued.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tweaks_come_from_set_tweak_actions() {
        let actions = json!(["notify", {"set_tweak": "sound", "value": "default"},
            {"set_tweak": "highlight"}]);
        assert_eq!(
            tweaks(&actions),
            json!({"sound": "default", "highlight": true})
        );
    }

    #[test]
    fn gateway_urls_are_checked() {
        let push = Push::new(&PushConfig::default()).expect("client");
        assert!(
            push.check_url("https://push.example/_matrix/push/v1/notify")
                .is_ok()
        );
        assert!(
            push.check_url("http://push.example/_matrix/push/v1/notify")
                .is_err()
        );
        assert!(push.check_url("https://push.example/other").is_err());
        assert!(
            push.check_url("https://127.0.0.1/_matrix/push/v1/notify")
                .is_err()
        );
        assert!(
            push.check_url("https://[::1]/_matrix/push/v1/notify")
                .is_err()
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = PushConfig {
            retry_initial_ms: 100,
            ..PushConfig::default()
        };
        let first = backoff_ms(&config, 0);
        assert!((50..=150).contains(&first), "{first}");
        let third = backoff_ms(&config, 2);
        assert!((200..=600).contains(&third), "{third}");
        let late = backoff_ms(&config, 40);
        assert!(late <= 90 * 60 * 1000, "{late}");
    }
}
