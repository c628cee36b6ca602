//! `ksrctl explain CLUSTER/NAMESPACE/NAME`: the whole story of one Service — every event of it
//! in the stream, and what each publisher last reported doing with it (serving it under which
//! name, keeping it waiting behind whose older claim, or refusing it, and since which event).

use std::ops::ControlFlow;

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::TryStreamExt;
use serde::Serialize;

use ksr_projection::status::{self, Standing, Status};
use ksr_proto::{ServiceKey, subject};

use crate::Error;
use crate::history::{self, EventRow, format_time};
use crate::read;

/// One publisher's last report on the Service.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub publisher: String,
    #[serde(flatten)]
    pub status: Status,
    /// When it was written (RFC 3339).
    pub written: String,
}

/// How far one publisher has applied the stream.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub publisher: String,
    /// The stream sequence up to which it has applied (and acknowledged) every event.
    pub up_to: u64,
}

/// Everything ksr knows about one Service.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub service: String,
    /// Its events in the stream, oldest first.
    pub events: Vec<EventRow>,
    /// Each publisher's progress through the stream (its durable consumer's ack floor).
    pub applied: Vec<Applied>,
    /// What each publisher last reported (none: no publisher reported on it).
    pub reports: Vec<Report>,
    /// Whether the status bucket exists (publishers of older releases write none).
    pub status_bucket: bool,
}

impl Explanation {
    /// The stream sequence of the Service's newest event.
    fn newest(&self) -> Option<u64> {
        self.events.last().map(|e| e.seq)
    }
}

/// Reads the Service's events and the publishers' reports on it.
pub async fn explain(args: &crate::cli::NatsArgs, key: &ServiceKey) -> Result<Explanation, Error> {
    let (js, stream) = read::open(args).await?;
    let mut events = Vec::new();
    read::each(
        &stream,
        &subject::subject(key),
        DeliverPolicy::All,
        "reading events",
        |r, _| {
            if let Ok(row) = history::event_row(r) {
                events.push(row);
            }
            ControlFlow::Continue(())
        },
    )
    .await?;
    let bucket = status::bucket(&stream.cached_info().config.name);
    let mut reports = Vec::new();
    // The publishers are the stream's durable consumers: one status key each.
    let consumers: Vec<_> = stream
        .consumers()
        .try_collect::<Vec<_>>()
        .await
        .map_err(crate::nats_err("reading the publishers' status"))?;
    let mut applied: Vec<Applied> = consumers
        .into_iter()
        .filter_map(|c| {
            Some(Applied {
                publisher: c.config.durable_name?,
                up_to: c.ack_floor.stream_sequence,
            })
        })
        .collect();
    applied.sort_by(|a, b| a.publisher.cmp(&b.publisher));
    let kv = js.get_key_value(&bucket).await.ok();
    if let Some(kv) = &kv {
        for publisher in applied.iter().map(|a| a.publisher.clone()) {
            let entry = kv
                .entry(status::key(&publisher, key))
                .await
                .map_err(crate::nats_err("reading the publishers' status"))?;
            let Some(entry) = entry else { continue };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            match Status::decode(&entry.value) {
                Ok(status) => reports.push(Report {
                    publisher,
                    written: format_time((status.at_ms as i64).saturating_mul(1_000_000)),
                    status,
                }),
                Err(e) => eprintln!("ksrctl: unreadable status of {publisher}: {e}"),
            }
        }
    }
    Ok(Explanation {
        service: format!("{}/{}/{}", key.cluster, key.namespace, key.name),
        events,
        applied,
        reports,
        status_bucket: kv.is_some(),
    })
}

/// Which publishers have applied the Service's newest event (their ack floor is past it).
fn applied_text(e: &Explanation) -> String {
    let Some(newest) = e.newest() else {
        return String::new();
    };
    let behind: Vec<String> = e
        .applied
        .iter()
        .filter(|a| a.up_to < newest)
        .map(|a| format!("{} (up to #{})", a.publisher, a.up_to))
        .collect();
    if behind.is_empty() {
        format!(
            "\nEvery publisher has applied its newest event (#{newest}); each report holds from the event it names.\n"
        )
    } else {
        format!(
            "\nNot applied yet by: {} — its newest event is #{newest}.\n",
            behind.join(", ")
        )
    }
}

/// What a report says, in words.
fn standing_text(s: &Standing) -> (&'static str, String) {
    match s {
        Standing::Serving { name } => ("serving", name.clone()),
        Standing::Waiting {
            name,
            owner,
            owner_since,
        } => (
            "waiting",
            format!(
                "{name}: held by {owner} (its claim since #{owner_since}); takes over when it goes"
            ),
        ),
        Standing::Rejected { reason } => ("refused", reason.clone()),
    }
}

/// The explanation as text: the events as `ksrctl events` prints them, then one line per
/// publisher's report, then whether every publisher has applied the newest event.
pub fn render(e: &Explanation) -> String {
    let mut out = format!("Service {}\n\n", e.service);
    if e.events.is_empty() {
        out.push_str(
            "No event of it in the stream: it was never routed (or retention dropped it).\n",
        );
    } else {
        out.push_str(&format!("Events in the stream ({}):\n", e.events.len()));
        let mut cells = vec![history::event_header()];
        cells.extend(e.events.iter().map(history::event_cells));
        out.push_str(&history::table(&cells));
    }
    out.push('\n');
    if !e.status_bucket || e.reports.is_empty() {
        out.push_str(applied_text(e).trim_start());
        out.push('\n');
    }
    if !e.status_bucket {
        out.push_str("No publisher has reported any status yet (no status bucket).\n");
        return out;
    }
    if e.reports.is_empty() {
        out.push_str("No publisher reports on it (it claims nothing in any target).\n");
        return out;
    }
    out.push_str("What each publisher did with it:\n");
    let mut cells = vec![
        [
            "PUBLISHER",
            "TARGET",
            "SINCE",
            "STANDING",
            "DETAIL",
            "WRITTEN",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for r in &e.reports {
        let (state, detail) = standing_text(&r.status.standing);
        cells.push(vec![
            r.publisher.clone(),
            r.status.target.clone(),
            format!("#{}", r.status.seq),
            state.to_owned(),
            detail,
            r.written.clone(),
        ]);
    }
    out.push_str(&history::table(&cells));
    out.push_str(&applied_text(e));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(publisher: &str, seq: u64, standing: Standing) -> Report {
        Report {
            publisher: publisher.into(),
            status: Status {
                target: "vulcand".into(),
                publisher: publisher.into(),
                seq,
                standing,
                at_ms: 0,
            },
            written: "1970-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_waiting_service_is_explained_with_its_owner_and_a_lagging_publisher_is_named() {
        let e = Explanation {
            service: "east/c/intruder".into(),
            events: Vec::new(),
            applied: Vec::new(),
            reports: vec![
                report(
                    "ksr-vulcand-ksr",
                    7,
                    Standing::Waiting {
                        name: "x-b-c.test.service.consul path /.*".into(),
                        owner: "b-c".into(),
                        owner_since: 3,
                    },
                ),
                report(
                    "ksr-consul-ksr",
                    5,
                    Standing::Rejected { reason: "x".into() },
                ),
            ],
            status_bucket: true,
        };
        let text = render(&e);
        assert!(text.contains("held by b-c (its claim since #3)"), "{text}");
        assert!(text.contains("refused"), "{text}");
    }
}
