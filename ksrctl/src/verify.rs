//! `verify` and `rebuild`: a target against the stream's current state.
//!
//! The expected content is the newest event of every Service applied to an empty target by
//! the publishers' own planner ([`ksr_projection::plan::simulate`]): exactly what a rebuild
//! writes, and what the live publishers converge to. `rebuild` writes through the
//! publishers' reconciliation with every event counted as acknowledged: the fenced apply
//! (records guarded by compares, so a rebuild racing a running publisher is safe) and then
//! the key/catalog pass that repairs hand-made changes.

use std::io::Write;
use std::time::Instant;

use ksr_projection::Records;
use ksr_projection::drift::Drift;
use ksr_runtime::stream_pass::Reading;

use crate::cli::{Output, Target};
use crate::{Error, Outcome, read, targets};

/// What a verification found.
#[derive(Debug, Default)]
struct Found {
    /// Entries a rebuild repairs.
    ours: Vec<Drift>,
    /// Entries that are not ours (other Consul nodes); reported, never changed.
    foreign: Vec<Drift>,
    refused: Vec<ksr_projection::Rejected>,
    /// vulcand frontends of ours that vulcand could not load (key, reason).
    unloadable: Vec<(String, String)>,
    services: usize,
    lag: Option<(String, u64)>,
}

async fn find(target: &Target) -> Result<Found, Error> {
    match target {
        Target::Vulcand { stream, target, .. } => {
            let started = Instant::now();
            let (_, s) = read::open(stream).await?;
            let latest = read::latest(&s).await?;
            tracing::debug!(
                services = latest.len(),
                seconds = started.elapsed().as_secs_f64(),
                "read the stream's newest events"
            );
            let projector = targets::vulcand(target, Records::Skip).await?;
            let report = ksr_publisher_vulcand::drift::drift(&projector, &latest).await?;
            let durable = target.durable();
            let lag = targets::lag(&s, &durable).await.map(|n| (durable, n));
            Ok(Found {
                ours: report.drift,
                foreign: Vec::new(),
                refused: report.refused,
                unloadable: report.unloadable,
                services: latest.len(),
                lag,
            })
        }
        Target::Consul { stream, target, .. } => {
            let started = Instant::now();
            let (_, s) = read::open(stream).await?;
            let latest = read::latest(&s).await?;
            tracing::debug!(
                services = latest.len(),
                seconds = started.elapsed().as_secs_f64(),
                "read the stream's newest events"
            );
            let projector = targets::consul(target, Records::Skip).await?;
            let drift =
                ksr_publisher_consul::drift::drift(&projector, &latest, target.environment())
                    .await?;
            let durable = target.durable();
            let lag = targets::lag(&s, &durable).await.map(|n| (durable, n));
            Ok(Found {
                ours: drift.ours,
                foreign: drift.foreign,
                refused: drift.refused,
                unloadable: Vec::new(),
                services: latest.len(),
                lag,
            })
        }
    }
}

fn output_of(target: &Target) -> Output {
    match target {
        Target::Vulcand { output, .. } | Target::Consul { output, .. } => output.resolve(),
    }
}

fn print_refused(refused: &[ksr_projection::Rejected]) {
    for ksr_projection::Rejected { seq, error: reason } in refused {
        eprintln!("ksrctl: the event at sequence {seq} can never be written: {reason}");
    }
}

fn print_unloadable(unloadable: &[(String, String)]) {
    for (key, reason) in unloadable {
        eprintln!(
            "ksrctl: vulcand cannot load {key} and refuses to start while it is in etcd: {reason} \
             (`ksrctl rebuild vulcand` or the publisher's reconciliation removes it)"
        );
    }
}

fn print_lag(found: &Found) {
    if let Some((durable, lag)) = &found.lag
        && *lag > 0
    {
        eprintln!(
            "ksrctl: consumer {durable} has {lag} events not yet applied; part of this may be in flight"
        );
    }
}

/// `ksrctl verify`: lists every missing, extra or different entry; drift exits 1.
pub async fn verify(target: &Target) -> Result<Outcome, Error> {
    let found = find(target).await?;
    let mut out = std::io::stdout().lock();
    let all = found.ours.iter().chain(&found.foreign);
    if output_of(target) == Output::Json {
        for d in all {
            writeln!(out, "{}", serde_json::to_string(d)?)?;
        }
    } else {
        for d in &found.ours {
            writeln!(out, "{}", d.line())?;
        }
        for d in &found.foreign {
            writeln!(out, "{}  (another node: not ours)", d.line())?;
        }
        let count = |pred: fn(&Drift) -> bool| found.ours.iter().filter(|d| pred(d)).count();
        writeln!(
            out,
            "{} missing, {} extra, {} different, {} foreign ({} Services in the stream)",
            count(|d| matches!(d, Drift::Missing { .. })),
            count(|d| matches!(d, Drift::Extra { .. })),
            count(|d| matches!(d, Drift::Different { .. })),
            found.foreign.len(),
            found.services
        )?;
    }
    print_refused(&found.refused);
    print_unloadable(&found.unloadable);
    print_lag(&found);
    Ok(
        if found.ours.is_empty() && found.foreign.is_empty() && found.unloadable.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Drift
        },
    )
}

/// `ksrctl rebuild [--dry-run]`.
pub async fn rebuild(target: &Target, dry_run: bool) -> Result<Outcome, Error> {
    if dry_run {
        let found = find(target).await?;
        let mut out = std::io::stdout().lock();
        if output_of(target) == Output::Json {
            for d in &found.ours {
                writeln!(out, "{}", serde_json::to_string(d)?)?;
            }
        } else {
            for d in &found.ours {
                writeln!(out, "{}", d.action())?;
            }
            for d in &found.foreign {
                writeln!(out, "leave   {}  (another node: not ours)", d.key())?;
            }
            writeln!(out, "{} changes would be written", found.ours.len())?;
        }
        print_refused(&found.refused);
        print_lag(&found);
        return Ok(Outcome::Clean);
    }
    let summary = match target {
        Target::Vulcand { stream, target, .. } => {
            let (_, s) = read::open(stream).await?;
            let projector = targets::vulcand(target, Records::Load).await?;
            let pushed = Reading::pushed();
            let r = ksr_publisher_vulcand::reconcile::reconcile(&projector, &s, u64::MAX, &pushed)
                .await?;
            format!(
                "applied {} events, rewrote {} keys, deleted {} keys",
                r.replayed, r.puts, r.deletes
            )
        }
        Target::Consul { stream, target, .. } => {
            let (_, s) = read::open(stream).await?;
            let projector = targets::consul(target, Records::Load).await?;
            ksr_publisher_consul::reconcile::ensure_node_and_router(
                &projector,
                target.environment(),
            )
            .await?;
            let r = ksr_publisher_consul::reconcile::reconcile(
                &projector,
                &s,
                u64::MAX,
                &Reading::pushed(),
                target.environment(),
            )
            .await?;
            format!(
                "applied {} events, registered {} instances, deregistered {}",
                r.replayed, r.registered, r.deregistered
            )
        }
    };
    println!("rebuilt: {summary}");
    Ok(Outcome::Clean)
}
