//! What every projection reports besides the consumer loop (`ksr_<publisher>_…`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What every projection reports besides the consumer loop (`ksr_<publisher>_…`).
#[derive(Debug, Clone, Default)]
pub struct ProjectionMetrics {
    /// Services that claimed a name another group owns.
    pub conflicts: prometheus_client::metrics::counter::Counter,
    /// Transactions re-planned because another writer changed a record.
    pub compare_retries: prometheus_client::metrics::counter::Counter,
    /// Names (routes) projected.
    pub names: prometheus_client::metrics::gauge::Gauge,
    /// Names with Services waiting for them.
    pub names_in_conflict: prometheus_client::metrics::gauge::Gauge,
    /// Unreadable records found under our prefix at the last load (quarantined).
    pub corrupt_records: prometheus_client::metrics::gauge::Gauge,
    /// Target entries rewritten or removed by reconciliation.
    pub repairs: prometheus_client::metrics::counter::Counter,
    /// Completed reconciliation passes.
    pub reconcile_runs: prometheus_client::metrics::counter::Counter,
    /// Duration of the last reconciliation pass.
    pub reconcile_seconds:
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Where the last reconciliation pass spent its time, by phase.
    pub reconcile_phase_seconds: Family<PhaseLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Reconciliation stream passes, by how they read the stream back.
    pub stream_passes: Family<ReadLabel, prometheus_client::metrics::counter::Counter>,
}

/// The label of `ksr_<publisher>_reconcile_stream_passes_total`: `pulled` through the
/// publisher's replay consumer, or `pushed` (it was held by another replica's pass, or the
/// NATS role may not create it).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub read: &'static str,
}

/// The label of `ksr_<publisher>_reconcile_phase_seconds`: one of a fixed set per publisher
/// (`records`, `replay`, `apply`, `target`, `tombstones`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// Times the phases of one reconciliation pass into
/// `ksr_<publisher>_reconcile_phase_seconds{phase}`.
#[derive(Debug)]
pub struct PhaseTimer<'a> {
    metrics: &'a ProjectionMetrics,
    at: std::time::Instant,
}

impl<'a> PhaseTimer<'a> {
    pub fn start(metrics: &'a ProjectionMetrics) -> Self {
        Self {
            metrics,
            at: std::time::Instant::now(),
        }
    }

    /// Ends phase `phase` (the time since the previous one ended).
    pub fn done(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.metrics
            .reconcile_phase_seconds
            .get_or_create(&PhaseLabel { phase })
            .set((now - self.at).as_secs_f64());
        self.at = now;
    }
}

impl ProjectionMetrics {
    /// Registers `ksr_<publisher>_<noun>s`, `…_<noun>s_in_conflict`, `…_<noun>_conflicts_total`,
    /// `…_compare_retries_total`, `…_reconcile_repairs_total`, `…_reconcile_runs_total` and
    /// `…_reconcile_duration_seconds` (noun: `route` for vulcand, `name` for Consul).
    pub fn register(&self, registry: &mut Registry, publisher: &str, noun: &str) {
        let (m, r) = (self, registry.sub_registry_with_prefix(publisher));
        r.register(
            format!("{noun}_conflicts"),
            format!("Services that claimed a {noun} another Service owns"),
            m.conflicts.clone(),
        );
        r.register(
            "compare_retries",
            "Transactions re-planned because another writer changed a record",
            m.compare_retries.clone(),
        );
        r.register(
            format!("{noun}s"),
            format!("{noun}s projected"),
            m.names.clone(),
        );
        r.register(
            format!("{noun}s_in_conflict"),
            format!("{noun}s with Services waiting for them"),
            m.names_in_conflict.clone(),
        );
        r.register(
            "corrupt_records",
            "Unreadable records under our prefix at the last load or reconciliation (quarantined)",
            m.corrupt_records.clone(),
        );
        r.register(
            "reconcile_repairs",
            "Target entries rewritten or removed by reconciliation",
            m.repairs.clone(),
        );
        r.register(
            "reconcile_runs",
            "Completed reconciliation passes",
            m.reconcile_runs.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of the last reconciliation pass",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "reconcile_phase_seconds",
            "Where the last reconciliation pass spent its time: reading our records (records), the stream's newest events (replay), re-applying them (apply), comparing the target (target), collecting tombstones (tombstones)",
            m.reconcile_phase_seconds.clone(),
        );
        r.register(
            "reconcile_stream_passes",
            "Reconciliation stream passes, by how they read the stream: pulled through the replay consumer (a chunk at a time), or pushed (the consumer was held by another replica or not permitted)",
            m.stream_passes.clone(),
        );
    }

    /// Counts a stream pass, `pulled` through the replay consumer or pushed.
    pub fn stream_pass(&self, pulled: bool) {
        let read = if pulled { "pulled" } else { "pushed" };
        self.stream_passes.get_or_create(&ReadLabel { read }).inc();
    }

    /// Reports the unreadable records of the last load: sets the gauge and returns the `/readyz`
    /// warning naming them (`target` is the ksrctl target that repairs them: `vulcand`, `consul`).
    pub fn report_corrupt(
        &self,
        corrupt: &[(crate::RecordKey, String, String)],
        target: &str,
    ) -> Option<String> {
        self.corrupt_records.set(corrupt.len() as i64);
        if corrupt.is_empty() {
            return None;
        }
        let keys: Vec<&str> = corrupt.iter().map(|(_, k, _)| k.as_str()).collect();
        Some(format!(
            "{} unreadable records under our prefix quarantined ({}); the next write for each \
             replaces it, `ksrctl rebuild {target}` repairs them now",
            keys.len(),
            keys.join(", ")
        ))
    }

    /// Sets the gauges from the cached records' counts.
    pub fn observe<M, D>(&self, state: &crate::State<M, D>) {
        let (names, conflicted) = state.counts();
        self.names.set(i64::try_from(names).unwrap_or(i64::MAX));
        self.names_in_conflict
            .set(i64::try_from(conflicted).unwrap_or(i64::MAX));
    }
}
