//! Presence (spec: client-server API "Presence", server-server API "Presence"): whether a user
//! is online, unavailable or offline, with an optional status message.
//!
//! ```text
//!  local user: PUT /presence/{user}/status, or a /sync while offline (set_presence,
//!              default online)
//!  remote user: m.presence EDU from the user's own server (only for users in a room here)
//!        '--> Presence::set: a new aux position when something visible changed
//!             local users' changes go out as m.presence EDUs to the servers sharing a room
//!  /sync: changes in (since, now] of the user and of users sharing a joined room with them
//!  sweeper: a local user whose clients stopped syncing 30 s ago goes offline
//! ```
//!
//! Presence lives in memory, like typing: after a restart everyone is offline until their
//! clients sync again or their servers send an update. `[presence] enabled = false` turns all of
//! it off: nothing is kept, sent or shown, and `PUT` is accepted and ignored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::presence::PresenceState;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};
use unitas_storage::ClientData;

use crate::api::ApiError;
use crate::ephemeral::Ephemeral;
use crate::state::AppState;

/// A local user whose clients stopped syncing this long ago goes offline.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest status message kept (longer ones from other servers are dropped).
pub const MAX_STATUS_BYTES: usize = 1024;
/// Most updates taken from one `m.presence` EDU.
const MAX_PUSH_ITEMS: usize = 100;
/// How often the sweeper looks for such users.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `online`, `unavailable` or `offline`.
    pub presence: PresenceState,
    /// The user's status message.
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ms: u64,
    /// Whether the user is active right now.
    pub currently_active: bool,
    /// Aux position of the last visible change.
    pub position: i64,
    /// Local syncs in progress.
    syncs: u32,
    /// When the last local sync ended (`None`: never synced, or a remote user).
    last_sync_end: Option<Instant>,
}

impl Entry {
    /// A user nothing is known of yet: offline, never shown.
    fn unknown() -> Entry {
        Entry {
            presence: PresenceState::Offline,
            status_msg: None,
            last_active_ms: 0,
            currently_active: false,
            position: 0,
            syncs: 0,
            last_sync_end: None,
        }
    }
}

/// What a change sets: the state, and the status message (`None`: keep the current one).
#[derive(Debug, Clone)]
pub struct Change {
    /// The new state.
    pub presence: PresenceState,
    /// The new status message, when it changes.
    pub status_msg: Option<Option<String>>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ms: u64,
    /// Whether the user is active now.
    pub currently_active: bool,
}

/// Every user's presence, in memory.
#[derive(Debug)]
pub struct Presence {
    enabled: bool,
    users: Mutex<HashMap<OwnedUserId, Entry>>,
}

impl Presence {
    /// An empty table; `enabled` false keeps it empty.
    pub fn new(enabled: bool) -> Presence {
        Presence {
            enabled,
            users: Mutex::default(),
        }
    }

    /// Whether presence is on (config `[presence] enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Applies a change; true when something a client sees changed (the change then has a new
    /// aux position and wakes syncing clients). A newer `last_active_ms` alone is kept quietly.
    pub fn set(&self, ephemeral: &Ephemeral, user: &UserId, change: Change) -> bool {
        if !self.enabled {
            return false;
        }
        let reserved;
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            let entry = users.entry(user.to_owned()).or_insert_with(Entry::unknown);
            let status_msg = change
                .status_msg
                .unwrap_or_else(|| entry.status_msg.clone());
            let visible = entry.presence != change.presence
                || entry.status_msg != status_msg
                || entry.currently_active != change.currently_active
                || entry.position == 0;
            entry.last_active_ms = entry.last_active_ms.max(change.last_active_ms);
            if !visible {
                return false;
            }
            reserved = ephemeral.reserve();
            entry.presence = change.presence;
            entry.status_msg = status_msg;
            entry.currently_active = change.currently_active;
            entry.position = reserved.at();
        }
        // Dropping the reservation publishes the position.
        drop(reserved);
        true
    }

    /// A user's presence, if known.
    pub fn get(&self, user: &UserId) -> Option<Entry> {
        if !self.enabled {
            return None;
        }
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(user).cloned()
    }

    /// Users whose presence changed in `(since, up_to]` (every known one for `since` `None`),
    /// offline users left out of an initial sync.
    pub fn changed_since(&self, since: Option<i64>, up_to: i64) -> Vec<(OwnedUserId, Entry)> {
        if !self.enabled {
            return Vec::new();
        }
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed: Vec<(OwnedUserId, Entry)> = users
            .iter()
            .filter(|(_, e)| e.position <= up_to && e.position > 0)
            .filter(|(_, e)| match since {
                Some(since) => e.position > since,
                None => e.presence != PresenceState::Offline,
            })
            .map(|(u, e)| (u.clone(), e.clone()))
            .collect();
        changed.sort_by_key(|(_, e)| e.position);
        changed
    }

    /// A local user's client started a sync; the change to make from its `set_presence`: an
    /// offline user comes online (or unavailable, if asked); a state set explicitly stays, and
    /// `offline` changes nothing.
    pub fn sync_started(&self, user: &UserId, asked: &PresenceState) -> Option<Change> {
        if !self.enabled {
            return None;
        }
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let entry = users.entry(user.to_owned()).or_insert_with(Entry::unknown);
        entry.syncs += 1;
        let now = now();
        match asked {
            PresenceState::Online if entry.presence == PresenceState::Offline => Some(Change {
                presence: PresenceState::Online,
                status_msg: None,
                last_active_ms: now,
                currently_active: true,
            }),
            PresenceState::Unavailable if entry.presence == PresenceState::Offline => {
                Some(Change {
                    presence: PresenceState::Unavailable,
                    status_msg: None,
                    last_active_ms: now,
                    currently_active: false,
                })
            }
            _ => None,
        }
    }

    /// A local user's sync ended.
    pub fn sync_ended(&self, user: &UserId) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = users.get_mut(user) {
            entry.syncs = entry.syncs.saturating_sub(1);
            entry.last_sync_end = Some(Instant::now());
        }
    }

    /// Local users (those that synced) with no sync in progress and none ended since
    /// `now - timeout`, still shown online or unavailable: they go offline. Returns them.
    pub fn sweep(
        &self,
        ephemeral: &Ephemeral,
        now: Instant,
        timeout: Duration,
    ) -> Vec<OwnedUserId> {
        // Decided and changed under one lock hold: a sync starting meanwhile keeps its user on.
        let mut gone = Vec::new();
        let mut reserved = Vec::new();
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            for (user, entry) in users.iter_mut() {
                let idle = entry.syncs == 0
                    && entry.presence != PresenceState::Offline
                    && entry
                        .last_sync_end
                        .is_some_and(|end| now.saturating_duration_since(end) >= timeout);
                if !idle {
                    continue;
                }
                let at = ephemeral.reserve();
                entry.presence = PresenceState::Offline;
                entry.currently_active = false;
                entry.position = at.at();
                reserved.push(at);
                gone.push(user.clone());
            }
        }
        // Dropping the reservations publishes the positions.
        drop(reserved);
        gone
    }
}

/// Ends a sync's presence when dropped (the sync returned or its client went away).
#[derive(Debug)]
pub struct Syncing<'a> {
    presence: &'a Presence,
    user: OwnedUserId,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.presence.sync_ended(&self.user);
    }
}

/// Marks a local user's sync started (online unless the client asks otherwise) and tells the
/// other servers when that changed their presence; the guard marks it ended.
pub async fn syncing<'a>(
    state: &'a AppState,
    user: &UserId,
    asked: &PresenceState,
) -> Result<Option<Syncing<'a>>, ApiError> {
    if !state.presence.enabled() {
        return Ok(None);
    }
    let change = state.presence.sync_started(user, asked);
    let guard = Syncing {
        presence: &state.presence,
        user: user.to_owned(),
    };
    if let Some(change) = change {
        set_local(state, user, change).await?;
    }
    Ok(Some(guard))
}

/// Sets a local user's presence and, when it changed, sends it to the servers sharing a room
/// with the user.
pub async fn set_local(state: &AppState, user: &UserId, change: Change) -> Result<(), ApiError> {
    if state.presence.set(&state.ephemeral, user, change) {
        federate(state, user).await?;
    }
    Ok(())
}

/// Sends a local user's current presence to the servers sharing a room with them.
async fn federate(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    let Some(entry) = state.presence.get(user) else {
        return Ok(());
    };
    let servers = crate::e2ee::servers_sharing_rooms(state, user.as_str()).await?;
    if servers.is_empty() {
        return Ok(());
    }
    state.sender.send_edu(
        user.server_name().as_str(),
        &servers,
        json!({"edu_type": "m.presence", "content": {"push": [push_item(user, &entry)]}}),
    );
    Ok(())
}

/// Runs until `shutdown`: local users whose clients stopped syncing go offline, and their
/// servers' peers hear of it.
pub async fn sweep_loop(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        for user in state
            .presence
            .sweep(&state.ephemeral, Instant::now(), SYNC_TIMEOUT)
        {
            if let Err(err) = federate(&state, &user).await {
                tracing::warn!(%user, error = ?err, "presence update not sent");
            }
        }
    }
}

/// Applies an `m.presence` EDU's content from `origin`: updates of its own users who are in a
/// room on this node (anything else is dropped).
pub async fn apply_edu(
    state: &AppState,
    origin: &ruma::ServerName,
    content: &Value,
) -> Result<(), ApiError> {
    if !state.presence.enabled() {
        return Ok(());
    }
    let Some(push) = content["push"].as_array() else {
        return Ok(());
    };
    let now = now();
    for item in push.iter().take(MAX_PUSH_ITEMS) {
        let Some(Ok(user)) = item["user_id"].as_str().map(OwnedUserId::try_from) else {
            continue;
        };
        if user.server_name() != origin || !in_a_room_here(state, &user).await? {
            continue;
        }
        let presence = match item["presence"].as_str() {
            Some("online") => PresenceState::Online,
            Some("unavailable") => PresenceState::Unavailable,
            Some("offline") => PresenceState::Offline,
            _ => continue,
        };
        let ago = item["last_active_ago"].as_u64().unwrap_or(0);
        state.presence.set(
            &state.ephemeral,
            &user,
            Change {
                presence,
                status_msg: Some(
                    item["status_msg"]
                        .as_str()
                        .filter(|m| m.len() <= MAX_STATUS_BYTES)
                        .map(str::to_owned),
                ),
                last_active_ms: now.saturating_sub(ago),
                currently_active: item["currently_active"].as_bool().unwrap_or(false),
            },
        );
    }
    Ok(())
}

/// Whether a user is joined to any room this node is in.
async fn in_a_room_here(state: &AppState, user: &UserId) -> Result<bool, ApiError> {
    for room in state
        .store
        .list_rooms_with_member_event(user.as_str())
        .await?
    {
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else {
            continue;
        };
        if crate::api::client::rooms::membership(state, &room_id, user)
            .await?
            .as_deref()
            == Some("join")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Now, in ms since the epoch.
pub fn now() -> u64 {
    u64::try_from(crate::node::now_ms()).unwrap_or(0)
}

/// The client's `m.presence` event for a user.
pub fn client_event(user: &UserId, entry: &Entry) -> Value {
    let mut content = json!({
        "presence": entry.presence.as_str(),
        "currently_active": entry.currently_active,
    });
    if entry.last_active_ms > 0 {
        content["last_active_ago"] = now().saturating_sub(entry.last_active_ms).into();
    }
    if let Some(status) = &entry.status_msg {
        content["status_msg"] = status.as_str().into();
    }
    json!({"type": "m.presence", "sender": user, "content": content})
}

/// One `push` item of an `m.presence` EDU.
fn push_item(user: &UserId, entry: &Entry) -> Value {
    let mut item = json!({
        "user_id": user,
        "presence": entry.presence.as_str(),
        "currently_active": entry.currently_active,
        "last_active_ago": now().saturating_sub(entry.last_active_ms),
    });
    if let Some(status) = &entry.status_msg {
        item["status_msg"] = status.as_str().into();
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online() -> Change {
        Change {
            presence: PresenceState::Online,
            status_msg: None,
            last_active_ms: 1,
            currently_active: true,
        }
    }

    #[test]
    fn only_visible_changes_take_a_position() {
        let ephemeral = Ephemeral::new(0);
        let presence = Presence::new(true);
        let user = ruma::owned_user_id!("@a:x.test");
        assert!(presence.set(&ephemeral, &user, online()));
        let first = presence.get(&user).unwrap().position;
        // The same state again, only more recently active: no new position.
        let mut again = online();
        again.last_active_ms = 5;
        assert!(!presence.set(&ephemeral, &user, again));
        assert_eq!(presence.get(&user).unwrap().position, first);
        assert_eq!(presence.get(&user).unwrap().last_active_ms, 5);
        // A status message is visible.
        let mut status = online();
        status.status_msg = Some(Some("lunch".into()));
        assert!(presence.set(&ephemeral, &user, status));
        let entry = presence.get(&user).unwrap();
        assert!(entry.position > first);
        assert_eq!(presence.changed_since(Some(first), entry.position).len(), 1);
        assert!(
            presence
                .changed_since(Some(entry.position), entry.position)
                .is_empty()
        );
    }

    #[test]
    fn a_user_who_stopped_syncing_goes_offline() {
        let ephemeral = Ephemeral::new(0);
        let presence = Presence::new(true);
        let user = ruma::owned_user_id!("@a:x.test");
        let change = presence
            .sync_started(&user, &PresenceState::Online)
            .unwrap();
        assert!(presence.set(&ephemeral, &user, change));
        let now = Instant::now();
        // Still syncing: stays online however long.
        assert!(
            presence
                .sweep(&ephemeral, now + SYNC_TIMEOUT * 10, SYNC_TIMEOUT)
                .is_empty()
        );
        presence.sync_ended(&user);
        assert!(
            presence
                .sweep(&ephemeral, Instant::now(), SYNC_TIMEOUT)
                .is_empty()
        );
        let later = Instant::now() + SYNC_TIMEOUT;
        assert_eq!(
            presence.sweep(&ephemeral, later, SYNC_TIMEOUT),
            vec![user.clone()]
        );
        assert_eq!(
            presence.get(&user).unwrap().presence,
            PresenceState::Offline
        );
        // A second sync asking for `offline` changes nothing.
        assert!(
            presence
                .sync_started(&user, &PresenceState::Offline)
                .is_none()
        );
    }

    #[test]
    fn disabled_presence_keeps_nothing() {
        let ephemeral = Ephemeral::new(0);
        let presence = Presence::new(false);
        let user = ruma::owned_user_id!("@a:x.test");
        assert!(!presence.set(&ephemeral, &user, online()));
        assert!(presence.get(&user).is_none());
        assert!(
            presence
                .sync_started(&user, &PresenceState::Online)
                .is_none()
        );
    }
}
