//! `ksrctl status`: the stream, its durable consumers, each cluster's last event, and the
//! newest routing-table checkpoint.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use ksr_proto::subject;

use crate::Error;
use crate::history::{format_time, table};

/// The stream's figures.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub name: String,
    /// When this incarnation of the stream was created: the incarnation the publishers'
    /// fences carry (a stream deleted and created again starts a new one).
    pub created: String,
    /// The same, in unix nanoseconds, as the fences store it.
    pub incarnation: u64,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_time: String,
    pub last_seq: u64,
    pub last_time: String,
    /// Service subjects ever published (removed Services included).
    pub subjects: u64,
}

/// One durable consumer.
#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Messages delivered more than once.
    pub redelivered: u64,
    /// Stream sequence up to which everything is acknowledged.
    pub ack_floor: u64,
    pub last_active: Option<String>,
}

/// One cluster's newest event.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub services: u64,
    pub last_seq: Option<u64>,
    pub last_time: Option<String>,
}

/// The routing-table checkpoints of the stream (this incarnation of it).
#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    pub bucket: String,
    /// Whether the bucket exists.
    pub exists: bool,
    pub count: u64,
    pub newest_seq: Option<u64>,
    pub newest_time: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub stream: StreamStatus,
    pub consumers: Vec<ConsumerStatus>,
    pub clusters: Vec<ClusterStatus>,
    pub checkpoints: CheckpointStatus,
}

fn ns(t: time::OffsetDateTime) -> String {
    format_time(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// Reads the status (a handful of API calls, no replay).
pub async fn read(
    js: &async_nats::jetstream::Context,
    stream: &mut async_nats::jetstream::stream::Stream,
    bucket: &str,
) -> Result<Status, Error> {
    let info = stream
        .info()
        .await
        .map_err(crate::nats_err("reading the stream status"))?
        .clone();
    let s = &info.state;
    let incarnation = ksr_runtime::nats::incarnation_of(&info);
    let status_stream = StreamStatus {
        name: info.config.name.clone(),
        created: ns(info.created),
        incarnation,
        messages: s.messages,
        bytes: s.bytes,
        first_seq: s.first_sequence,
        first_time: ns(s.first_timestamp),
        last_seq: s.last_sequence,
        last_time: ns(s.last_timestamp),
        subjects: s.subjects_count,
    };
    let consumers: Vec<_> = stream
        .consumers()
        .try_collect::<Vec<_>>()
        .await
        .map_err(crate::nats_err("reading the stream status"))?;
    let mut consumers: Vec<ConsumerStatus> = consumers
        .into_iter()
        .filter(|c| c.config.durable_name.is_some())
        .map(|c| ConsumerStatus {
            name: c.name.clone(),
            pending: c.num_pending,
            ack_pending: c.num_ack_pending as u64,
            redelivered: c.num_redelivered as u64,
            ack_floor: c.ack_floor.stream_sequence,
            last_active: c.delivered.last_active.map(ns),
        })
        .collect();
    consumers.sort_by(|a, b| a.name.cmp(&b.name));

    // Subjects per cluster, then each cluster's newest message.
    let mut per_cluster: BTreeMap<String, u64> = BTreeMap::new();
    let mut subjects = stream
        .info_with_subjects(subject::all_filter())
        .await
        .map_err(crate::nats_err("reading the stream status"))?;
    while let Some(entry) = subjects.next().await {
        let (subj, _) = entry.map_err(crate::nats_err("reading the stream status"))?;
        if let Ok(key) = subject::parse_subject(&subj) {
            *per_cluster.entry(key.cluster).or_default() += 1;
        }
    }
    let mut clusters = Vec::new();
    for (cluster, services) in per_cluster {
        let filter = format!("{}.{cluster}.>", subject::SUBJECT_PREFIX);
        let last = stream.get_last_raw_message_by_subject(&filter).await.ok();
        clusters.push(ClusterStatus {
            cluster,
            services,
            last_seq: last.as_ref().map(|m| m.sequence),
            last_time: last.map(|m| ns(m.time)),
        });
    }
    let mut checkpoints = CheckpointStatus {
        bucket: bucket.to_owned(),
        exists: false,
        count: 0,
        newest_seq: None,
        newest_time: None,
    };
    // The checkpoints are an accelerator: a bucket that cannot be read is a warning here.
    match crate::checkpoints::Checkpoints::open(js, bucket, stream).await {
        Ok(Some(c)) => {
            let ours = c.listed();
            checkpoints.exists = true;
            checkpoints.count = ours.len() as u64;
            checkpoints.newest_seq = ours.last().map(|m| m.seq);
            checkpoints.newest_time = ours.last().map(|m| format_time(m.published_unix_ns));
        }
        Ok(None) => {}
        Err(e) => eprintln!("ksrctl: {e}"),
    }
    Ok(Status {
        stream: status_stream,
        consumers,
        clusters,
        checkpoints,
    })
}

/// The status for people.
pub fn render(s: &Status) -> String {
    let st = &s.stream;
    let mut out = format!(
        "stream {}: {} messages, {:.1} MiB, {} Service subjects\n  created {} (incarnation {})\n  first #{} at {}\n  last  #{} at {}\n\n",
        st.name,
        st.messages,
        st.bytes as f64 / 1_048_576.0,
        st.subjects,
        st.created,
        st.incarnation,
        st.first_seq,
        st.first_time,
        st.last_seq,
        st.last_time
    );
    let mut rows = vec![
        [
            "CONSUMER",
            "LAG",
            "ACK PENDING",
            "REDELIVERED",
            "ACK FLOOR",
            "LAST ACTIVE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in &s.consumers {
        rows.push(vec![
            c.name.clone(),
            c.pending.to_string(),
            c.ack_pending.to_string(),
            c.redelivered.to_string(),
            format!("#{}", c.ack_floor),
            c.last_active.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![
        ["CLUSTER", "SERVICES", "LAST EVENT", "AT"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &s.clusters {
        rows.push(vec![
            c.cluster.clone(),
            c.services.to_string(),
            c.last_seq
                .map(|s| format!("#{s}"))
                .unwrap_or_else(|| "?".into()),
            c.last_time.clone().unwrap_or_else(|| "?".into()),
        ]);
    }
    out.push_str(&table(&rows));
    let c = &s.checkpoints;
    out.push_str(&match (c.exists, c.newest_seq, &c.newest_time) {
        (true, Some(seq), Some(at)) => format!(
            "\ncheckpoints (bucket {}): {}, newest #{seq} of {at}\n",
            c.bucket, c.count
        ),
        _ => format!(
            "\ncheckpoints (bucket {}): none; `ksrctl checkpoint` makes `state --at` and `diff` \
             start near their instant\n",
            c.bucket
        ),
    });
    out
}
