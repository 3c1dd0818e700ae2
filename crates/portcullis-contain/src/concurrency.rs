//! Concurrent requests per identity: a counter per key with a guard that
//! gives the slot back when the request ends, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// In-flight counts by key.
#[derive(Default)]
pub struct InFlight {
    map: Arc<Mutex<HashMap<String, usize>>>,
}

/// A taken slot; dropping it releases the slot.
pub struct Slot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl InFlight {
    /// Takes a slot for `key` if fewer than `max` are taken.
    pub fn acquire(&self, key: &str, max: usize) -> Option<Slot> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            map: self.map.clone(),
            key: key.to_owned(),
        })
    }

    /// Slots taken by `key` now.
    pub fn count(&self, key: &str) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}
