//! The mass-removal guard: one full diff (start-up or relist) may not remove more than a
//! bounded share of a cluster's routes unless an operator confirms.
//!
//! A watcher pointed at an empty or wrong apiserver, or given a selector that now matches
//! nothing, sees every Service of its cluster as deleted. Held removals are kept back (the
//! watcher goes on publishing additions and updates), counted and reported in `/readyz` until
//! `ksrctl confirm-removals --cluster <name>` (or a restart with `--allow-mass-removal`)
//! releases them.

/// The limits, from `--max-removals`, `--max-removal-percent` and `--allow-mass-removal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalGuard {
    /// Removals one full diff may always publish.
    pub max: usize,
    /// ... and beyond that, the share of the routed Services it may remove.
    pub percent: u8,
    /// Never hold anything back.
    pub allow: bool,
}

impl RemovalGuard {
    /// Whether `removals` out of `routed` Services are too many to publish unconfirmed: over
    /// the count *and* over the share (a few deletions while the watcher was down pass).
    pub fn trips(&self, removals: usize, routed: usize) -> bool {
        !self.allow && removals > self.max && removals * 100 > usize::from(self.percent) * routed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: RemovalGuard = RemovalGuard {
        max: 5,
        percent: 30,
        allow: false,
    };

    #[test]
    fn a_wiped_cluster_trips_a_few_deletions_do_not() {
        assert!(GUARD.trips(10, 10), "an empty list of a 10-Service cluster");
        assert!(GUARD.trips(400, 1000));
        assert!(
            !GUARD.trips(3, 10),
            "three deleted while the watcher was down"
        );
        assert!(!GUARD.trips(50, 1000), "5 % of a large cluster");
        assert!(!GUARD.trips(5, 5), "at the count, whatever the share");
        let allowed = RemovalGuard {
            allow: true,
            ..GUARD
        };
        assert!(!allowed.trips(1000, 1000));
    }
}
