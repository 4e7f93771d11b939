//! The per-device module cache's map: one entry per key, each initialized exactly once,
//! and never while the map's lock is held, so compiling or loading one module does not
//! block lookups or the compilation of another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A concurrent map whose values are computed once per key, outside the map's lock.
#[derive(Debug)]
pub struct OnceMap<T> {
    cells: Mutex<HashMap<String, Arc<OnceLock<T>>>>,
}

impl<T> Default for OnceMap<T> {
    fn default() -> Self {
        OnceMap { cells: Mutex::new(HashMap::new()) }
    }
}

impl<T> OnceMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key` (a clone: values are handles such as `Arc`s), computing it with
    /// `init` if no thread has. Concurrent callers
    /// for the same key wait for the first one's `init`; callers for other keys do not
    /// (the lock is held only to find or insert the key's cell).
    pub fn get_or_init(&self, key: &str, init: impl FnOnce() -> T) -> T
    where
        T: Clone,
    {
        let cell = {
            let mut map = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(key) {
                Some(c) => Arc::clone(c),
                None => Arc::clone(map.entry(key.to_string()).or_default()),
            }
        };
        cell.get_or_init(init).clone()
    }

    /// Keys present (initialized or being initialized).
    pub fn len(&self) -> usize {
        self.cells.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no key was ever asked for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn many_threads_initialize_each_key_once() {
        let map: OnceMap<usize> = OnceMap::new();
        let inits = AtomicUsize::new(0);
        let start = Barrier::new(32);
        std::thread::scope(|s| {
            for t in 0..32 {
                let (map, inits, start) = (&map, &inits, &start);
                s.spawn(move || {
                    start.wait();
                    for k in 0..8 {
                        let key = format!("k{}", (k + t) % 8);
                        let v = map.get_or_init(&key, || {
                            inits.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            key.len() * 1000 + (k + t) % 8
                        });
                        assert_eq!(v, key.len() * 1000 + (k + t) % 8);
                    }
                });
            }
        });
        assert_eq!(inits.load(Ordering::SeqCst), 8, "each key initialized exactly once");
        assert_eq!(map.len(), 8);
    }

    #[test]
    fn an_initializer_does_not_hold_the_map_lock() {
        // Key "a"'s initializer waits until key "b" has been initialized by another
        // thread: with the lock held during initialization this would deadlock.
        let map: OnceMap<u32> = OnceMap::new();
        let b_done = (Mutex::new(false), std::sync::Condvar::new());
        std::thread::scope(|s| {
            let (map, b_done) = (&map, &b_done);
            s.spawn(move || {
                map.get_or_init("a", || {
                    let (m, cv) = b_done;
                    let mut done = m.lock().unwrap();
                    while !*done {
                        let (g, timeout) = cv.wait_timeout(done, Duration::from_secs(10)).unwrap();
                        assert!(!timeout.timed_out(), "key b could not be initialized while a was");
                        done = g;
                    }
                    1
                });
            });
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                map.get_or_init("b", || 2);
                let (m, cv) = b_done;
                *m.lock().unwrap() = true;
                cv.notify_all();
            });
        });
        assert_eq!(map.get_or_init("a", || 0), 1);
        assert_eq!(map.get_or_init("b", || 0), 2);
    }
}
