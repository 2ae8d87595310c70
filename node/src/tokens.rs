//! A cache of access-token lookups, so authenticating a request costs no database query.
//!
//! Every path that deletes tokens (logout, device deletion, password change, deactivation, a
//! login reusing a device ID) calls [`TokenCache::forget_user`] after the database change, so a
//! revoked token stops working at once. Entries also carry the token's expiry.

use std::collections::HashMap;
use std::sync::Mutex;

use ruma::UserId;

use crate::api::ruma::ClientUser;

/// Most cached tokens; past that the cache starts over.
const MAX_TOKENS: usize = 100_000;

/// A cached lookup: the user a token logs in, and when the token expires.
type Entry = (ClientUser, Option<i64>);

/// Token digest -> the user it logs in, and when it expires.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl TokenCache {
    /// The cached user of a token, when cached and not expired.
    pub fn get(&self, hash: &[u8], now_ms: i64) -> Option<ClientUser> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (user, expires) = map.get(hash)?;
        if expires.is_some_and(|at| at <= now_ms) {
            return None;
        }
        Some(user.clone())
    }

    /// Remembers a token's user.
    pub fn insert(&self, user: ClientUser, expires: Option<i64>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TOKENS {
            map.clear();
        }
        map.insert(user.token_hash.clone(), (user, expires));
    }

    /// Drops every cached token of `user` (after tokens of theirs were deleted).
    pub fn forget_user(&self, user: &UserId) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (u, _)| u.user_id != user);
    }
}

/// How many of a device's latest transaction IDs are remembered: a retry of one of them gets
/// the event it made; an older ID counts as new. (Clients retry within seconds or minutes;
/// Synapse forgets them after 30 minutes.) Without a bound a device's every send stayed in
/// memory for as long as the process ran.
pub const TXNS_PER_DEVICE: usize = 1_000;

/// Transaction IDs per device, the latest [`TXNS_PER_DEVICE`], loaded from the database at a
/// device's first send since start; from then on every send of the device passes through this
/// process, so the map holds its latest IDs and a send needs no database read to be idempotent.
#[derive(Debug, Default)]
pub struct TransactionCache {
    devices: Mutex<HashMap<(String, String), DeviceTxns>>,
}

/// One device's latest transaction IDs and their events, oldest first in `order`.
#[derive(Debug, Default)]
struct DeviceTxns {
    events: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl DeviceTxns {
    fn insert(&mut self, txn: String, event_id: String) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.events.entry(txn.clone()) {
            slot.insert(event_id);
            self.order.push_back(txn);
        }
        while self.order.len() > TXNS_PER_DEVICE {
            if let Some(old) = self.order.pop_front() {
                self.events.remove(&old);
            }
        }
    }
}

impl TransactionCache {
    /// The event a transaction ID produced, if the device's IDs are loaded; `None` when the
    /// device is not loaded yet.
    pub fn get(&self, user: &str, device: &str, txn: &str) -> Option<Option<String>> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let known = devices.get(&(user.to_owned(), device.to_owned()))?;
        Some(known.events.get(txn).cloned())
    }

    /// Loads a device's latest transaction IDs, oldest first.
    pub fn load(&self, user: &str, device: &str, ids: Vec<(String, String)>) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if devices.len() >= MAX_TOKENS {
            devices.clear();
        }
        let known = devices
            .entry((user.to_owned(), device.to_owned()))
            .or_default();
        for (txn, event_id) in ids {
            known.insert(txn, event_id);
        }
    }

    /// Records a transaction ID just used.
    pub fn insert(&self, user: &str, device: &str, txn: &str, event_id: &str) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = devices.get_mut(&(user.to_owned(), device.to_owned())) {
            known.insert(txn.to_owned(), event_id.to_owned());
        }
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::{TXNS_PER_DEVICE, TransactionCache};

    #[test]
    fn a_device_keeps_its_latest_transaction_ids() {
        let cache = TransactionCache::default();
        assert_eq!(cache.get("@a:x", "D", "t0"), None);
        cache.load("@a:x", "D", vec![("t0".into(), "$e0".into())]);
        for n in 1..=TXNS_PER_DEVICE {
            cache.insert("@a:x", "D", &format!("t{n}"), &format!("$e{n}"));
        }
        // The oldest one went; the latest are there; another device knows nothing.
        assert_eq!(cache.get("@a:x", "D", "t0"), Some(None));
        assert_eq!(cache.get("@a:x", "D", "t1"), Some(Some("$e1".into())));
        let last = format!("t{TXNS_PER_DEVICE}");
        assert_eq!(
            cache.get("@a:x", "D", &last),
            Some(Some(format!("$e{TXNS_PER_DEVICE}")))
        );
        assert_eq!(cache.get("@a:x", "E", "t1"), None);
        // A repeated ID keeps its first event and does not count twice.
        cache.insert("@a:x", "D", "t1", "$other");
        assert_eq!(cache.get("@a:x", "D", "t1"), Some(Some("$e1".into())));
    }
}
