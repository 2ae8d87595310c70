//! Changes that are not room events — account data, receipts, typing — and their position.
//!
//! They are ordered by one "aux" position, separate from the event stream; a sync token carries
//! both (`s<events>_<aux>`). Account data and receipts are stored; typing lives in memory only
//! (it is meaningless after a restart). Each change bumps the position and wakes syncing
//! clients through a watch channel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::watch;

/// Who is typing in which room, and the aux positions of changes.
#[derive(Debug)]
pub struct Ephemeral {
    next: AtomicI64,
    position: watch::Sender<i64>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

#[derive(Debug, Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    changed_at: i64,
}

/// Longest typing notification honoured.
const MAX_TYPING: Duration = Duration::from_secs(120);

impl Ephemeral {
    /// Starts after `max_stored`, the highest aux position in the database.
    pub fn new(max_stored: i64) -> Ephemeral {
        Ephemeral {
            next: AtomicI64::new(max_stored + 1),
            position: watch::channel(max_stored).0,
            typing: Mutex::default(),
        }
    }

    /// Reserves the position for a change about to be stored.
    pub fn reserve(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes a stored (or in-memory) change at `at`: wakes syncing clients.
    pub fn publish(&self, at: i64) {
        self.position.send_modify(|p| *p = (*p).max(at));
    }

    /// The published position.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    /// Sets or clears `user`'s typing in `room`.
    pub fn set_typing(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) {
        let at = self.reserve();
        {
            let mut typing = self.typing.lock().unwrap_or_else(|e| e.into_inner());
            let entry = typing.entry(room.to_owned()).or_default();
            match timeout {
                Some(t) => {
                    entry
                        .users
                        .insert(user.to_owned(), Instant::now() + t.min(MAX_TYPING));
                }
                None => {
                    entry.users.remove(user);
                }
            }
            entry.changed_at = at;
        }
        self.publish(at);
    }

    /// Who is typing in `room` now, if that changed after `since`.
    pub fn typing_since(&self, room: &RoomId, since: Option<i64>) -> Option<Vec<OwnedUserId>> {
        let typing = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let entry = typing.get(room)?;
        if since.is_some_and(|s| entry.changed_at <= s) {
            return None;
        }
        let now = Instant::now();
        let mut users: Vec<OwnedUserId> = entry
            .users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        Some(users)
    }
}
