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

/// Transaction IDs per device, loaded from the database at a device's first send since start;
/// from then on every send of the device passes through this process, so the map is complete
/// and a send needs no database read to be idempotent.
#[derive(Debug, Default)]
pub struct TransactionCache {
    devices: Mutex<HashMap<(String, String), HashMap<String, String>>>,
}

impl TransactionCache {
    /// The event a transaction ID produced, if the device's IDs are loaded; `None` when the
    /// device is not loaded yet.
    pub fn get(&self, user: &str, device: &str, txn: &str) -> Option<Option<String>> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let known = devices.get(&(user.to_owned(), device.to_owned()))?;
        Some(known.get(txn).cloned())
    }

    /// Loads a device's transaction IDs.
    pub fn load(&self, user: &str, device: &str, ids: Vec<(String, String)>) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if devices.len() >= MAX_TOKENS {
            devices.clear();
        }
        devices
            .entry((user.to_owned(), device.to_owned()))
            .or_default()
            .extend(ids);
    }

    /// Records a transaction ID just used.
    pub fn insert(&self, user: &str, device: &str, txn: &str, event_id: &str) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = devices.get_mut(&(user.to_owned(), device.to_owned())) {
            known.insert(txn.to_owned(), event_id.to_owned());
        }
    }
}
