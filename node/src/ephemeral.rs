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

/// A reserved aux position; dropping it publishes the change (see [`Ephemeral::reserve`]).
#[derive(Debug)]
pub struct Reserved<'a> {
    owner: &'a Ephemeral,
    at: i64,
}

impl Reserved<'_> {
    /// The position.
    pub fn at(&self) -> i64 {
        self.at
    }

    /// Notes that the change at this position is about `mark` (before it becomes visible, so
    /// a sync that reads up to the position also sees the mark).
    pub fn mark(&self, mark: Mark) {
        self.owner.marks.note(mark, self.at);
    }
}

/// What a stored change is about, for [`Ephemeral::changed_since`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mark {
    /// A user's account data (global or in a room), by user ID.
    AccountData(String),
    /// To-device messages for one of the user's devices, by user ID.
    ToDevice(String),
    /// A user's invites and knocks in rooms this node is not in, by user ID.
    RemoteInvites(String),
    /// Read receipts in a room, by room ID.
    Receipts(String),
    /// Any user's device list.
    DeviceLists,
}

/// The last aux position of each [`Mark`] (a stream change cache): a sync skips the reads
/// whose answer would be empty. Bounded: past [`MAX_MARKS`] entries they are forgotten and
/// the floor rises, below which everything counts as changed.
#[derive(Debug)]
struct Marks {
    inner: Mutex<MarksInner>,
}

#[derive(Debug)]
struct MarksInner {
    /// Changes at or below this position are not remembered.
    floor: i64,
    last: HashMap<Mark, i64>,
}

/// Most marks remembered.
const MAX_MARKS: usize = 100_000;

impl Marks {
    fn note(&self, mark: Mark, at: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.last.len() >= MAX_MARKS && !inner.last.contains_key(&mark) {
            let highest = inner.last.values().copied().max().unwrap_or(inner.floor);
            inner.floor = inner.floor.max(highest);
            inner.last.clear();
        }
        let last = inner.last.entry(mark).or_insert(at);
        *last = (*last).max(at);
    }

    fn changed_since(&self, mark: &Mark, since: i64) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        since < inner.floor || inner.last.get(mark).is_some_and(|at| *at > since)
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.owner.finish(self.at);
    }
}

/// Who is typing in which room, and the aux positions of changes.
#[derive(Debug)]
pub struct Ephemeral {
    next: AtomicI64,
    /// Reserved positions whose change is not written yet.
    pending: Mutex<std::collections::BTreeSet<i64>>,
    position: watch::Sender<i64>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    marks: Marks,
    /// Per `(user, device)`: a position up to which its to-device inbox was read empty (and
    /// what earlier responses delivered was deleted).
    inbox_empty: Mutex<HashMap<(String, String), i64>>,
}

#[derive(Debug, Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    changed_at: i64,
}

/// Microseconds since the epoch (0 if the clock is before it).
fn clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Longest typing notification honoured.
const MAX_TYPING: Duration = Duration::from_secs(120);

impl Ephemeral {
    /// Starts after `max_stored`, the highest aux position in the database.
    pub fn new(max_stored: i64) -> Ephemeral {
        let start = max_stored.max(clock_us());
        Ephemeral {
            next: AtomicI64::new(start + 1),
            pending: Mutex::default(),
            position: watch::channel(start).0,
            typing: Mutex::default(),
            // What was stored before this start is not known: changed, for any position
            // before it.
            marks: Marks {
                inner: Mutex::new(MarksInner {
                    floor: start,
                    last: HashMap::new(),
                }),
            },
            inbox_empty: Mutex::default(),
        }
    }

    /// Whether the device's to-device inbox is known to hold nothing: read empty at some
    /// position, with no message for the user stored after it.
    pub fn inbox_empty(&self, user: &str, device: &str) -> bool {
        let empty_at = {
            let inbox = self.inbox_empty.lock().unwrap_or_else(|e| e.into_inner());
            inbox.get(&(user.to_owned(), device.to_owned())).copied()
        };
        empty_at.is_some_and(|at| !self.changed_since(&Mark::ToDevice(user.to_owned()), at))
    }

    /// Notes that the device's inbox held nothing up to aux position `at`.
    pub fn set_inbox_empty(&self, user: &str, device: &str, at: i64) {
        let mut inbox = self.inbox_empty.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.len() >= MAX_MARKS {
            inbox.clear();
        }
        inbox.insert((user.to_owned(), device.to_owned()), at);
    }

    /// Whether a change about `mark` may have been stored after aux position `since` (false
    /// only when none was: the read can be skipped).
    pub fn changed_since(&self, mark: &Mark, since: i64) -> bool {
        self.marks.changed_since(mark, since)
    }

    /// Whether a read about `mark` after `since` can be skipped: an incremental read (`since`
    /// given) and no change about it stored after that position.
    pub fn unchanged_since(&self, mark: &Mark, since: Option<i64>) -> bool {
        since.is_some_and(|s| !self.changed_since(mark, s))
    }

    /// Reserves the position for a change about to be stored. The change becomes visible to
    /// syncs when the returned guard is dropped (stored or failed, either way), and only once
    /// every position before it is done too: a sync never reads past a change still being
    /// written, so a client's acknowledgement (its next `since`) never covers a change it has
    /// not seen (a to-device message stored late would otherwise be deleted unseen).
    ///
    /// Positions follow the clock in microseconds (or count on from the last one when changes
    /// come faster): typing and presence take positions but are not stored, so after a restart
    /// the highest stored position may be below one a client already holds in its token; a
    /// clock-based start keeps every new position above it, so nothing stored after the
    /// restart (a to-device message) hides below the client's `since`.
    pub fn reserve(&self) -> Reserved<'_> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let at = self.next.load(Ordering::Relaxed).max(clock_us());
        self.next.store(at + 1, Ordering::Relaxed);
        pending.insert(at);
        Reserved { owner: self, at }
    }

    /// Marks `at` done and publishes the highest position below which nothing is pending:
    /// wakes syncing clients.
    fn finish(&self, at: i64) {
        let visible = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.remove(&at);
            match pending.first() {
                Some(first) => first - 1,
                None => self.next.load(Ordering::Relaxed) - 1,
            }
        };
        self.position.send_modify(|p| *p = (*p).max(visible));
    }

    /// The published position.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    /// Sets or clears `user`'s typing in `room`.
    pub fn set_typing(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) {
        let reserved = self.reserve();
        let at = reserved.at();
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
        drop(reserved);
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

#[cfg(test)]
mod position_tests {
    use super::{Ephemeral, MAX_MARKS, Mark};

    #[test]
    fn marks_tell_which_changes_came_after_a_position() {
        let aux = Ephemeral::new(0);
        let start = *aux.subscribe().borrow();
        let alice = "@alice:a.test".to_owned();
        let bob = "@bob:a.test".to_owned();
        // Before the start nothing is known.
        assert!(aux.changed_since(&Mark::AccountData(alice.clone()), start - 1));
        assert!(!aux.changed_since(&Mark::AccountData(alice.clone()), start));
        let at = aux.reserve();
        at.mark(Mark::AccountData(alice.clone()));
        let position = at.at();
        drop(at);
        assert!(aux.changed_since(&Mark::AccountData(alice.clone()), position - 1));
        assert!(!aux.changed_since(&Mark::AccountData(alice.clone()), position));
        assert!(!aux.changed_since(&Mark::AccountData(bob.clone()), start));
        assert!(!aux.changed_since(&Mark::ToDevice(alice.clone()), start));
        // An inbox read empty stays known empty until a message for the user comes.
        assert!(!aux.inbox_empty(&alice, "PHONE"));
        aux.set_inbox_empty(&alice, "PHONE", position);
        assert!(aux.inbox_empty(&alice, "PHONE"));
        assert!(!aux.inbox_empty(&alice, "LAPTOP"));
        aux.reserve().mark(Mark::ToDevice(alice.clone()));
        assert!(!aux.inbox_empty(&alice, "PHONE"));
        // Too many marks: they are forgotten, and everything up to the last counts as changed.
        let mut first_at = None;
        for n in 0..MAX_MARKS {
            let user = format!("@u{n}:a.test");
            let at = aux.reserve();
            at.mark(Mark::ToDevice(user));
            first_at.get_or_insert(at.at());
        }
        let last = aux.reserve();
        last.mark(Mark::DeviceLists);
        let last_at = last.at();
        drop(last);
        assert!(aux.changed_since(&Mark::AccountData(bob.clone()), first_at.unwrap()));
        assert!(!aux.changed_since(&Mark::AccountData(bob), last_at));
        assert!(aux.changed_since(&Mark::DeviceLists, last_at - 1));
    }

    #[test]
    fn a_change_is_visible_only_when_every_earlier_one_is_written() {
        let aux = Ephemeral::new(10);
        let watch = aux.subscribe();
        let start = *watch.borrow();
        let first = aux.reserve();
        let second = aux.reserve();
        let (first_at, second_at) = (first.at(), second.at());
        assert!(start < first_at && first_at < second_at);
        // The later change finishes first: a sync must not read past the earlier one.
        drop(second);
        assert!(*watch.borrow() < first_at);
        drop(first);
        assert_eq!(*watch.borrow(), second_at);
        // A failed write (guard dropped without a row) does not hold the stream back.
        let third = aux.reserve();
        let third_at = third.at();
        drop(third);
        assert_eq!(*watch.borrow(), third_at);
    }

    #[test]
    fn positions_after_a_restart_stay_above_unstored_ones() {
        // Typing and presence take positions that are never stored: a node restarting with
        // nothing stored still starts above them.
        let before = Ephemeral::new(0);
        let typing = before.reserve().at();
        let after = Ephemeral::new(0);
        assert!(*after.subscribe().borrow() >= typing);
        assert!(after.reserve().at() > typing);
        // A stored position ahead of the clock is respected too.
        let ahead = Ephemeral::new(i64::MAX / 2);
        assert_eq!(ahead.reserve().at(), i64::MAX / 2 + 1);
    }
}
