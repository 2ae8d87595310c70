//! Answers of a few hot reads kept in memory (every sync asks them) and dropped by the writes
//! that change them.
//!
//! A read that misses remembers the memo's generation before it goes to the database and fills
//! the memo only if no write came in between: a write bumps the generation after its commit,
//! so an answer read from before the commit never lands after the write dropped the old one.
//! Only this process writes the tables involved (the node owns its database).

use std::collections::HashMap;
use std::sync::Mutex;

/// Remembered answers by key.
#[derive(Debug)]
pub(crate) struct Memo<V> {
    inner: Mutex<Inner<V>>,
    /// Most keys kept; a full memo starts over.
    limit: usize,
}

#[derive(Debug)]
struct Inner<V> {
    generation: u64,
    map: HashMap<String, V>,
}

impl<V: Clone> Memo<V> {
    pub(crate) fn new(limit: usize) -> Memo<V> {
        Memo {
            inner: Mutex::new(Inner {
                generation: 0,
                map: HashMap::new(),
            }),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered answer, or the generation to hand to [`Memo::fill`] after reading it.
    pub(crate) fn get(&self, key: &str) -> Result<V, u64> {
        let inner = self.lock();
        inner.map.get(key).cloned().ok_or(inner.generation)
    }

    /// Remembers `value`, read after [`Memo::get`] returned `generation`, unless a write came
    /// since.
    pub(crate) fn fill(&self, key: String, value: V, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.map.len() >= self.limit {
            inner.map.clear();
        }
        inner.map.insert(key, value);
    }

    /// A write changed the answer for `key` (called after its commit).
    pub(crate) fn forget(&self, key: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.remove(key);
    }

    /// A write changed answers it cannot name.
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.clear();
    }
}

/// The key of a device's entry.
pub(crate) fn device_key(user_id: &str, device_id: &str) -> String {
    // User IDs have no NUL (their grammar), so the split point is unambiguous.
    format!("{user_id}\0{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_from_before_a_write_is_not_remembered() {
        let memo: Memo<u32> = Memo::new(10);
        let generation = memo.get("a").unwrap_err();
        // A write commits while the read is out.
        memo.forget("a");
        memo.fill("a".into(), 1, generation);
        assert_eq!(memo.get("a"), Err(1));
        // A read after the write is.
        memo.fill("a".into(), 2, 1);
        assert_eq!(memo.get("a"), Ok(2));
        memo.forget_all();
        assert!(memo.get("a").is_err());
    }

    #[test]
    fn a_full_memo_starts_over() {
        let memo: Memo<u32> = Memo::new(2);
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            memo.fill(key.into(), i as u32, 0);
        }
        assert!(memo.get("a").is_err());
        assert_eq!(memo.get("c"), Ok(2));
    }
}
