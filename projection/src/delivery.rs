//! What the consumer hands a projection and what it gets back: deliveries, the apply report,
//! and the [`Projector`] interface the consumer loop drives.

use std::collections::HashMap;
use std::future::Future;

use ksr_proto::{Event, ServiceKey};

/// One decoded event with its stream position.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stream sequence: the fence every projection compares against.
    pub seq: u64,
    /// Which incarnation of the stream the sequence counts in (its creation time, unix
    /// nanoseconds; `ksr_runtime::nats::incarnation`): a recreated stream restarts at 1.
    pub incarnation: u64,
    pub event: Event,
}

/// The outcome of applying one batch.
#[derive(Debug, Default, Clone)]
pub struct ApplyReport {
    /// Events whose state was written.
    pub applied: u64,
    /// Events skipped because the target already held a newer (or the same) sequence.
    pub stale: u64,
    /// Events that can never be applied: terminated, not retried.
    pub rejected: Vec<Rejected>,
    /// Removals acknowledged without being applied (`--policy upsert-only`).
    pub skipped_removals: u64,
    /// Where the Services the batch touched stand now ([`crate::status`]).
    pub changes: Vec<crate::status::Change>,
}

/// An event a target can never apply (stream sequence), and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub seq: u64,
    pub error: std::sync::Arc<dyn std::error::Error + Send + Sync>,
}

impl Rejected {
    pub fn new(seq: u64, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            seq,
            error: std::sync::Arc::new(error),
        }
    }
}

/// A failed apply: transient failures are retried by redelivery.
#[derive(Debug)]
pub struct ApplyError {
    /// Short, fixed reason for the metric label.
    pub reason: &'static str,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.source)
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// A projection target (vulcand's etcd keys, the Consul catalog).
pub trait Projector: Send + Sync {
    /// Applies the newest event of each Service in the batch (sorted by sequence), fenced so
    /// that replays and races never regress state. Must be committed before returning `Ok`.
    fn apply(
        &self,
        batch: &[Delivery],
    ) -> impl Future<Output = Result<ApplyReport, ApplyError>> + Send;

    /// Where every Service claiming a name stands now, from the cached records, handed to
    /// `each` one at a time: reported again after each reconciliation pass, so a status lost
    /// in a crash between a commit and its report is written again. None by default.
    fn standings(&self, each: &mut dyn FnMut(crate::status::Change)) {
        let _ = each;
    }
}

/// Keeps the newest event per Service, sorted by sequence.
pub fn coalesce(events: Vec<(u64, Event)>, incarnation: u64) -> Vec<Delivery> {
    let mut by_key: HashMap<ServiceKey, (u64, Event)> = HashMap::with_capacity(events.len());
    for (seq, event) in events {
        match by_key.get(&event.key) {
            Some((newer, _)) if *newer > seq => {}
            _ => {
                by_key.insert(event.key.clone(), (seq, event));
            }
        }
    }
    let mut out: Vec<Delivery> = by_key
        .into_values()
        .map(|(seq, event)| Delivery {
            seq,
            incarnation,
            event,
        })
        .collect();
    out.sort_by_key(|d| d.seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksr_proto::Change;

    fn ev(name: &str, change: Change) -> Event {
        Event {
            key: ServiceKey::new("east", "ns", name),
            change,
            resource_version: "1".into(),
            observed_unix_ms: 0,
            observer: String::new(),
            manager: None,
        }
    }

    #[test]
    fn coalescing_keeps_the_newest_event_per_service() {
        let a1 = ev("a", Change::Removed);
        let mut a2 = a1.clone();
        a2.observed_unix_ms = 5;
        let b = ev("b", Change::Removed);
        let out = coalesce(vec![(12, a2.clone()), (10, a1), (11, b)], 7);
        assert_eq!(out.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![11, 12]);
        assert_eq!(out[1].event, a2);
    }
}
