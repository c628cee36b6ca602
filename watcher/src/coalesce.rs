//! Per-Service coalescing: which changed Services to publish now, and which wait.
//!
//! A Service that changes after a quiet `window` (nothing of it published within the last
//! `window`) is published at once; further changes to it within `window` of that publication
//! wait for the window's end and go out as one event. So a lone change costs no wait at all,
//! while a Service whose endpoints churn still produces at most one event per `window`.
//! Pure bookkeeping on instants handed in, unit-tested without a clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Changed keys, split into those due now and those waiting for their window to end.
#[derive(Debug)]
pub struct Coalescer<K> {
    window: Duration,
    /// Keys due for publication.
    ready: BTreeSet<K>,
    /// Keys waiting, by the instant they become due.
    waiting: BTreeSet<(Instant, K)>,
    /// When each waiting key becomes due.
    due: HashMap<K, Instant>,
    /// When each key was last taken for publication, within the last `window`.
    recent: HashMap<K, Instant>,
    /// `recent` in the order taken, to forget entries once their window has passed.
    taken: VecDeque<(Instant, K)>,
}

impl<K: Ord + Hash + Clone> Coalescer<K> {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            due: HashMap::new(),
            recent: HashMap::new(),
            taken: VecDeque::new(),
        }
    }

    /// `key` changed at `now`.
    pub fn mark(&mut self, key: K, now: Instant) {
        if self.ready.contains(&key) || self.due.contains_key(&key) {
            return;
        }
        match self.recent.get(&key).map(|t| *t + self.window) {
            Some(due) if due > now => {
                self.waiting.insert((due, key.clone()));
                self.due.insert(key, due);
            }
            _ => {
                self.ready.insert(key);
            }
        }
    }

    /// When the next key is due, as seen at `now` (`now` itself when one is due already);
    /// `None` while nothing is pending.
    pub fn due_at(&self, now: Instant) -> Option<Instant> {
        if self.ready.is_empty() {
            self.waiting.first().map(|(t, _)| *t)
        } else {
            Some(now)
        }
    }

    /// How many keys are pending (due or waiting).
    pub fn pending(&self) -> usize {
        self.ready.len() + self.due.len()
    }

    /// Takes the keys due at `now` (every pending key with `all`, for a full diff) and
    /// remembers them as published at `now`.
    pub fn take(&mut self, now: Instant, all: bool) -> BTreeSet<K> {
        while let Some((t, _)) = self.waiting.first() {
            if *t > now && !all {
                break;
            }
            let (_, key) = self.waiting.pop_first().expect("first exists");
            self.due.remove(&key);
            self.ready.insert(key);
        }
        let keys = std::mem::take(&mut self.ready);
        self.forget(now);
        for key in &keys {
            self.remember(key.clone(), now);
        }
        keys
    }

    /// Records `key` as published at `now` (once, however often it is said).
    fn remember(&mut self, key: K, now: Instant) {
        if self.recent.insert(key.clone(), now) != Some(now) {
            self.taken.push_back((now, key));
        }
    }

    /// Remembers `keys` (taken for a full diff along with the pending ones) as published
    /// at `now`.
    pub fn published(&mut self, keys: impl IntoIterator<Item = K>, now: Instant) {
        for key in keys {
            self.remember(key, now);
        }
    }

    /// Keys whose publication failed: due again one window after they were taken.
    pub fn retry(&mut self, keys: impl IntoIterator<Item = K>, now: Instant) {
        for key in keys {
            self.remember(key.clone(), now);
            self.mark(key, now);
        }
    }

    /// Drops what was taken a whole window ago: those keys are due at once again.
    fn forget(&mut self, now: Instant) {
        while let Some((t, _)) = self.taken.front() {
            if *t + self.window > now {
                break;
            }
            let (t, key) = self.taken.pop_front().expect("front exists");
            if self.recent.get(&key) == Some(&t) {
                self.recent.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(50);

    fn is_due(c: &Coalescer<&'static str>, at: Instant) -> bool {
        c.due_at(at).is_some_and(|t| t <= at)
    }

    /// A coalescer that has just published "a" (at the `t0` it returns).
    fn a_published_at_t0() -> (Instant, Coalescer<&'static str>) {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W);
        c.mark("a", t0);
        assert_eq!(c.take(t0, false), BTreeSet::from(["a"]));
        (t0, c)
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_change_after_a_quiet_window_is_due_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W);
        c.mark("a", t0);
        assert!(is_due(&c, t0));
        assert_eq!(c.take(t0, false), BTreeSet::from(["a"]));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.due_at(t0), None);
        // A whole window later, "a" is due at once again.
        c.mark("a", ms(t0, 50));
        assert!(is_due(&c, ms(t0, 50)));
        assert_eq!(c.take(ms(t0, 50), false), BTreeSet::from(["a"]));
    }

    #[test]
    fn changes_within_the_window_wait_for_its_end_and_become_one() {
        let (t0, mut c) = a_published_at_t0();
        for n in [5, 10, 30, 49] {
            c.mark("a", ms(t0, n));
        }
        assert_eq!(c.pending(), 1);
        assert!(!is_due(&c, ms(t0, 49)));
        assert_eq!(c.due_at(t0), Some(ms(t0, 50)));
        assert!(c.take(ms(t0, 49), false).is_empty());
        assert!(is_due(&c, ms(t0, 50)));
        assert_eq!(c.take(ms(t0, 50), false), BTreeSet::from(["a"]));
        // Taken at 50: the next change waits until 100.
        c.mark("a", ms(t0, 60));
        assert_eq!(c.due_at(t0), Some(ms(t0, 100)));
    }

    #[test]
    fn other_keys_are_not_held_by_one_in_its_window() {
        let (t0, mut c) = a_published_at_t0();
        c.mark("a", ms(t0, 10));
        c.mark("b", ms(t0, 10));
        assert!(is_due(&c, ms(t0, 10)));
        assert_eq!(c.take(ms(t0, 10), false), BTreeSet::from(["b"]));
        assert_eq!(c.pending(), 1);
        assert_eq!(c.take(ms(t0, 50), false), BTreeSet::from(["a"]));
    }

    #[test]
    fn a_full_diff_takes_the_waiting_keys_too() {
        let (t0, mut c) = a_published_at_t0();
        c.mark("a", ms(t0, 10));
        c.mark("b", ms(t0, 10));
        assert_eq!(c.take(ms(t0, 10), true), BTreeSet::from(["a", "b"]));
        c.published(["c"], ms(t0, 10));
        assert_eq!(c.pending(), 0);
        // Everything of the full diff counts as published at 10.
        c.mark("c", ms(t0, 20));
        assert_eq!(c.due_at(t0), Some(ms(t0, 60)));
    }

    #[test]
    fn a_failed_key_is_retried_a_window_later() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W);
        c.mark("a", t0);
        let keys = c.take(t0, false);
        c.retry(keys, ms(t0, 5));
        assert!(!is_due(&c, ms(t0, 30)));
        assert_eq!(c.due_at(t0), Some(ms(t0, 55)));
        assert_eq!(c.take(ms(t0, 55), false), BTreeSet::from(["a"]));
    }

    #[test]
    fn what_was_published_long_ago_is_forgotten() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W);
        for i in 0..1000 {
            c.mark(i, t0);
        }
        c.take(t0, false);
        assert_eq!(c.recent.len(), 1000);
        c.mark(5000, ms(t0, 60));
        c.take(ms(t0, 60), false);
        assert_eq!(
            c.recent.len(),
            1,
            "only the key taken within the window is remembered"
        );
        assert_eq!(c.taken.len(), 1);
    }
}
