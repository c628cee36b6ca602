//! Routing-table checkpoints in a JetStream object store, so `state --at` and `diff` replay
//! only the events after the nearest checkpoint instead of the whole stream.
//!
//! A checkpoint is derived data: the table a replay of the stream up to its sequence builds
//! (format in [`ksr_proto::checkpoint`]). One that is missing, unreadable or of another
//! incarnation of the stream is skipped with a warning and the replay starts earlier, so a
//! checkpoint can make an answer faster, never different. `--no-checkpoints` ignores them.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, stream::StorageType};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use ksr_proto::checkpoint::{self as format, Checkpoint, Entry, MAX_UNREADABLE, Unreadable};
use ksr_runtime::replay::Latest;

use crate::Error;
use crate::history::{At, Table};

/// One stored checkpoint, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub seq: u64,
    pub published_unix_ns: i64,
}

impl Meta {
    /// Whether the table at this checkpoint is at or before `at`.
    fn precedes(&self, at: At) -> bool {
        match at {
            At::Seq(s) => self.seq <= s,
            At::Time(t) => self.published_unix_ns <= t,
        }
    }
}

/// The routing table at a checkpoint, with the unreadable events up to it.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub table: Table,
    /// The next stream sequence to replay (1 when starting from nothing).
    pub next: u64,
    pub unreadable: Vec<Unreadable>,
    pub unreadable_unlisted: u64,
}

impl Replayed {
    /// Starting from the stream's first event.
    pub fn start() -> Self {
        Self {
            next: 1,
            ..Self::default()
        }
    }

    /// Takes in one record of the replay (in stream order).
    pub fn apply(&mut self, record: Latest) {
        self.next = record.seq + 1;
        match record.event {
            Ok(event) => self
                .table
                .apply(record.seq, record.published_unix_ns, event),
            // (Stored as text: a checkpoint is read back by other releases.)
            Err(e) if self.unreadable.len() < MAX_UNREADABLE => self.unreadable.push(Unreadable {
                seq: record.seq,
                subject: record.subject,
                reason: e.reason().to_owned(),
                message: e.to_string(),
            }),
            Err(_) => self.unreadable_unlisted += 1,
        }
    }
}

/// The checkpoints of one incarnation of one stream.
pub struct Checkpoints {
    store: ObjectStore,
    bucket: String,
    stream: String,
    created_unix_ns: i64,
    /// This incarnation's checkpoints, oldest first, as listed when opened.
    listed: Vec<Meta>,
    /// Checkpoints of earlier incarnations of the same stream name (void: their sequences
    /// restarted).
    stale: Vec<String>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("bucket", &self.bucket)
            .field("stream", &self.stream)
            .field("created_unix_ns", &self.created_unix_ns)
            .field("listed", &self.listed.len())
            .finish_non_exhaustive()
    }
}

fn is_not_found(message: &str) -> bool {
    message.contains("not found")
}

impl Checkpoints {
    /// The checkpoints of `stream` in `bucket`, listed; `None` when the bucket does not exist.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        stream: &Stream,
    ) -> Result<Option<Self>, Error> {
        match js.get_object_store(bucket).await {
            Ok(store) => Ok(Some(Self::new(store, bucket, stream).await?)),
            Err(e) if is_not_found(&format!("{e:?}")) => Ok(None),
            Err(e) => Err(Error::Checkpoint(format!("bucket {bucket:?}: {e}"))),
        }
    }

    /// The checkpoints of `stream` in `bucket`, creating the bucket if needed.
    pub async fn create(
        js: &jetstream::Context,
        bucket: &str,
        stream: &Stream,
        replicas: ksr_runtime::config::ReplicasArgs,
    ) -> Result<Self, Error> {
        if let Some(found) = Self::open(js, bucket, stream).await? {
            return Ok(found);
        }
        let store = js
            .create_object_store(object_store::Config {
                bucket: bucket.to_owned(),
                description: Some("kube-service-router routing-table checkpoints".into()),
                storage: StorageType::File,
                compression: true,
                num_replicas: usize::from(replicas.replicas),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Checkpoint(format!("cannot create bucket {bucket:?}: {e}")))?;
        Self::new(store, bucket, stream).await
    }

    async fn new(store: ObjectStore, bucket: &str, stream: &Stream) -> Result<Self, Error> {
        let info = stream.cached_info();
        let mut found = Self {
            store,
            bucket: bucket.to_owned(),
            stream: info.config.name.clone(),
            // The incarnation: the same on every replica of a clustered stream.
            created_unix_ns: i64::try_from(ksr_runtime::nats::incarnation_of(info))
                .unwrap_or(i64::MAX),
            listed: Vec::new(),
            stale: Vec::new(),
        };
        found.list().await?;
        Ok(found)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// This incarnation's checkpoints, oldest first.
    pub fn listed(&self) -> &[Meta] {
        &self.listed
    }

    /// Checkpoints of earlier streams of the same name.
    pub fn stale(&self) -> &[String] {
        &self.stale
    }

    fn prefix(&self) -> String {
        format!("{}/{}/", self.stream, self.created_unix_ns)
    }

    fn name(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.prefix())
    }

    async fn list(&mut self) -> Result<(), Error> {
        let err = |e: String| Error::Checkpoint(format!("listing bucket {:?}: {e}", self.bucket));
        let infos: Vec<object_store::ObjectInfo> = tokio::time::timeout(
            Duration::from_secs(30),
            self.store
                .list()
                .await
                .map_err(|e| err(e.to_string()))?
                .try_collect(),
        )
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
        let (prefix, stream_prefix) = (self.prefix(), format!("{}/", self.stream));
        let (mut ours, mut stale) = (Vec::new(), Vec::new());
        for info in infos {
            if let Some(seq) = info.name.strip_prefix(&prefix) {
                let published = info.metadata.get("published_unix_ns");
                match (seq.parse(), published.and_then(|p| p.parse().ok())) {
                    (Ok(seq), Some(published_unix_ns)) => ours.push(Meta {
                        name: info.name,
                        seq,
                        published_unix_ns,
                    }),
                    _ => eprintln!("ksrctl: ignoring malformed checkpoint {:?}", info.name),
                }
            } else if info.name.starts_with(&stream_prefix) {
                stale.push(info.name);
            }
        }
        ours.sort_by_key(|m| m.seq);
        (self.listed, self.stale) = (ours, stale);
        Ok(())
    }

    /// Reads and checks one checkpoint.
    pub async fn load(&self, meta: &Meta) -> Result<Replayed, Error> {
        let err = |e: String| Error::Checkpoint(format!("{}: {e}", meta.name));
        let mut object = self
            .store
            .get(&meta.name)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut bytes = Vec::with_capacity(object.info().size);
        // The object store checks the content's SHA-256 digest as it reads.
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| err(e.to_string()))?;
        let checkpoint = format::decode(&bytes).map_err(|e| err(e.to_string()))?;
        if (
            checkpoint.stream.as_str(),
            checkpoint.stream_created_unix_ns,
            checkpoint.seq,
        ) != (self.stream.as_str(), self.created_unix_ns, meta.seq)
        {
            return Err(err(format!(
                "holds {} (created {}) at #{}, not what its name says",
                checkpoint.stream, checkpoint.stream_created_unix_ns, checkpoint.seq
            )));
        }
        let mut table = Table::default();
        for entry in checkpoint.entries {
            let event = ksr_proto::decode(&entry.event)
                .map_err(|e| err(format!("event at sequence {}: {e}", entry.seq)))?;
            table.apply(entry.seq, entry.published_unix_ns, event);
        }
        Ok(Replayed {
            table,
            next: checkpoint.seq + 1,
            unreadable: checkpoint.unreadable,
            unreadable_unlisted: checkpoint.unreadable_unlisted,
        })
    }

    /// The newest checkpoint at or before `at` and past sequence `after` that loads,
    /// skipping (with a warning) any that does not.
    pub async fn nearest(&self, at: At, after: u64) -> Option<(&Meta, Replayed)> {
        for meta in self.listed.iter().rev() {
            if meta.seq < after {
                break;
            }
            if !meta.precedes(at) {
                continue;
            }
            match self.load(meta).await {
                Ok(replayed) => return Some((meta, replayed)),
                Err(e) => eprintln!("ksrctl: ignoring checkpoint {e}"),
            }
        }
        None
    }

    /// Stores the table at `seq` (stored at `published_unix_ns`) as a checkpoint.
    pub async fn write(
        &self,
        seq: u64,
        published_unix_ns: i64,
        progress: &Replayed,
    ) -> Result<usize, Error> {
        let err = |e: String| Error::Checkpoint(format!("writing checkpoint #{seq}: {e}"));
        let entries = progress
            .table
            .entries()
            .into_iter()
            .map(|(seq, published_unix_ns, event)| {
                Ok(Entry {
                    seq,
                    published_unix_ns,
                    event: ksr_proto::encode(event)?,
                })
            })
            .collect::<Result<Vec<_>, ksr_proto::ProtoError>>()
            .map_err(|e| err(e.to_string()))?;
        let bytes = format::encode(&Checkpoint {
            stream: self.stream.clone(),
            stream_created_unix_ns: self.created_unix_ns,
            seq,
            published_unix_ns,
            entries,
            unreadable: progress.unreadable.clone(),
            unreadable_unlisted: progress.unreadable_unlisted,
        })
        .map_err(|e| err(e.to_string()))?;
        let meta = ObjectMetadata {
            name: self.name(seq),
            description: Some(format!(
                "routing table of stream {} at #{seq} ({} Services)",
                self.stream,
                progress.table.len()
            )),
            metadata: [
                ("seq".to_owned(), seq.to_string()),
                (
                    "published_unix_ns".to_owned(),
                    published_unix_ns.to_string(),
                ),
                ("services".to_owned(), progress.table.len().to_string()),
            ]
            .into(),
            ..Default::default()
        };
        self.store
            .put(meta, &mut bytes.as_slice())
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(bytes.len())
    }

    /// Deletes checkpoints by name.
    pub async fn delete(&self, names: &[String]) -> Result<(), Error> {
        for name in names {
            self.store
                .delete(name)
                .await
                .map_err(|e| Error::Checkpoint(format!("deleting {name}: {e}")))?;
        }
        Ok(())
    }
}

/// The checkpoints a history read may start from: none with `--no-checkpoints`; a bucket
/// that is missing or unreadable is a warning (the replay starts earlier), never an error.
pub async fn for_reading(
    js: &jetstream::Context,
    stream: &Stream,
    args: &crate::cli::ReplayArgs,
) -> Option<Checkpoints> {
    if args.no_checkpoints {
        return None;
    }
    Checkpoints::open(js, &args.checkpoints.bucket, stream)
        .await
        .unwrap_or_else(|e| {
            eprintln!("ksrctl: {e}; replaying without checkpoints");
            None
        })
}

/// The nearest usable checkpoint at or before `at` and past sequence `after`, said on
/// standard error with its unreadable events from `after` on (as a replay would report them).
pub async fn resume(source: Option<&Checkpoints>, at: At, after: u64) -> Option<Replayed> {
    let source = source?;
    let (meta, replayed) = source.nearest(at, after).await?;
    eprintln!(
        "ksrctl: starting from checkpoint #{} (bucket {})",
        meta.seq, source.bucket
    );
    for u in replayed.unreadable.iter().filter(|u| u.seq >= after) {
        crate::read::report_unreadable(u.seq, &u.subject, &u.reason, &u.message);
    }
    if replayed.unreadable_unlisted > 0 {
        eprintln!(
            "ksrctl: and {} more unreadable events before #{}",
            replayed.unreadable_unlisted, meta.seq
        );
    }
    Some(replayed)
}
