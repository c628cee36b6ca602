//! NATS connection, the route stream's configuration and checks, and durable consumers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use async_nats::ConnectErrorKind;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerArgs, NatsArgs};
use crate::retry::until_ready_or;
use crate::tls::TlsFlags;
use crate::{Health, RuntimeError};

/// Connects to NATS for a long-running process: retries with backoff while no server answers
/// (each failure is `health`'s not-ready reason) and reconnects forever once connected. A TLS
/// misconfiguration or refused credentials end it with an error naming the flag to fix.
/// `None` once `shutdown` is cancelled first.
pub async fn connect(
    args: &NatsArgs,
    client_name: &str,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<Option<async_nats::Client>, RuntimeError> {
    let attempt = || async {
        let opts = options(args, client_name).await?.max_reconnects(None);
        connect_with(args, opts).await
    };
    let fatal = |e: &RuntimeError| {
        matches!(
            e,
            RuntimeError::Tls { .. }
                | RuntimeError::Credentials { .. }
                | RuntimeError::File { .. }
                | RuntimeError::Stream { .. }
        )
    };
    until_ready_or(shutdown, health, "nats", fatal, attempt)
        .await
        .transpose()
}

/// Connects once, failing when no server answers (for command-line tools).
pub async fn connect_once(
    args: &NatsArgs,
    client_name: &str,
) -> Result<async_nats::Client, RuntimeError> {
    let opts = options(args, client_name).await?;
    connect_with(args, opts).await
}

async fn connect_with(
    args: &NatsArgs,
    opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, RuntimeError> {
    let servers = server_addrs(&args.url).map_err(|message| RuntimeError::Stream {
        stream: args.stream.clone(),
        message: format!("--nats-url {:?}: {message}", args.url),
    })?;
    opts.connect(servers).await.map_err(|source| {
        let flags = TlsFlags {
            ca: "--nats-ca",
            cert: "--nats-cert",
        };
        if let Some(tls) = crate::tls::misconfigured(&source, &args.url, flags) {
            return tls;
        }
        match source.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                RuntimeError::Credentials {
                    url: args.url.clone(),
                    flag: if args.creds.is_some() {
                        "--nats-creds"
                    } else if args.nkey.is_some() {
                        "--nats-nkey"
                    } else {
                        "--nats-nkey or --nats-creds"
                    },
                    source,
                }
            }
            _ => RuntimeError::Connect {
                url: args.url.clone(),
                source,
            },
        }
    })
}

/// Connection options from the flags: credentials, NKey, TLS (verified against `--nats-ca`,
/// with a client certificate when given). A file that cannot be read is an error naming its
/// flag.
async fn options(
    args: &NatsArgs,
    client_name: &str,
) -> Result<async_nats::ConnectOptions, RuntimeError> {
    let flag =
        |flag: &str, path: &std::path::Path, e: &dyn std::fmt::Display| RuntimeError::Stream {
            stream: args.stream.clone(),
            message: format!("{flag} {}: {e}", path.display()),
        };
    let mut opts = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &args.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| flag("--nats-creds", creds, &e))?;
    }
    if let Some(file) = &args.nkey {
        let seed = crate::tls::read_flag_file("--nats-nkey", file)?;
        let seed = String::from_utf8_lossy(&seed);
        let seed = seed.trim();
        if !seed.starts_with("SU") {
            return Err(flag("--nats-nkey", file, &"not a user NKey seed (SU…)"));
        }
        opts = opts.nkey(seed.to_owned());
    }
    for (name, path) in [
        ("--nats-ca", &args.ca),
        ("--nats-cert", &args.cert),
        ("--nats-key", &args.key),
    ] {
        // (Read now so a missing file names its flag; async-nats reads them at connect.)
        if let Some(path) = path {
            crate::tls::read_flag_file(name, path)?;
        }
    }
    if let Some(ca) = &args.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}

/// The servers of a comma-separated `--nats-url` (`nats://a:4222,nats://b:4222`): the client
/// connects to any and fails over between them.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|e| format!("{u:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err("no server given".into());
    }
    Ok(servers)
}

/// What the route stream must look like.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    pub subjects: Vec<String>,
    /// 0 keeps events forever (the default: the stream is the audit log).
    pub max_age: Duration,
    /// -1 for no size limit.
    pub max_bytes: i64,
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl StreamSettings {
    /// The defaults of the contract: all route subjects, history kept, 2 min de-duplication.
    pub fn routes(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            subjects: vec![ksr_proto::subject::all_filter()],
            max_age: Duration::ZERO,
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }

    /// A per-cluster stream: only `cluster`'s subjects, for sourcing into an aggregate.
    pub fn cluster(name: &str, cluster: &str) -> Self {
        Self {
            subjects: vec![ksr_proto::subject::cluster_filter(cluster)],
            ..Self::routes(name)
        }
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: -1,
            // This creation's incarnation, in the configuration every replica shares.
            metadata: [(INCARNATION_KEY.to_owned(), now_ns().to_string())].into(),
            ..Default::default()
        }
    }
}

/// The stream metadata key that holds its incarnation.
pub const INCARNATION_KEY: &str = "ksr.incarnation";

/// The incarnation of a stream: its creation time in unix nanoseconds. A stream deleted and
/// created again restarts its sequences at 1; records fenced by (incarnation, sequence) tell
/// the two apart, so a recreated stream never looks older than what it replaces.
pub fn incarnation(stream: &stream::Stream) -> u64 {
    incarnation_of(stream.cached_info())
}

/// The incarnation in `info`: the creation time stamped in the stream's metadata
/// ([`INCARNATION_KEY`], replicated with its configuration), else the time the answering
/// server created its copy. Only the first is stable on a cluster: every replica of an R3
/// stream reports its own creation time, so a new stream leader would look like a recreated
/// stream (found by the clustered fault test). Watchers stamp it ([`ensure_stream`]).
pub fn incarnation_of(info: &stream::Info) -> u64 {
    info.config
        .metadata
        .get(INCARNATION_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| created_ns(info))
}

fn created_ns(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0)
}

/// Whether the stream lives on a JetStream cluster (a single server names none).
fn clustered(info: &stream::Info) -> bool {
    info.cluster
        .as_ref()
        .is_some_and(|c| c.name.as_deref().is_some_and(|n| !n.is_empty()))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What [`upgrade_stream`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUpgrade {
    pub replicas: (usize, usize),
    /// The incarnation stamped now (`None`: it was stamped already).
    pub stamped: Option<u64>,
}

/// Brings an existing stream up to date, as an operator (the watchers may only create it):
/// raises its replicas to `replicas` (never lowers them; JetStream copies it to the new
/// replicas online) and stamps its incarnation when a stream made before stamping (or by
/// hand) has none — the creation time its leader reports, the value fences already carry on a
/// single server.
pub async fn upgrade_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<StreamUpgrade, RuntimeError> {
    let err = |message: String| RuntimeError::Stream {
        stream: name.to_owned(),
        message,
    };
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let info = stream
        .info()
        .await
        .map_err(|e| err(format!("cannot read info: {e}")))?;
    if replicas > 1 && !clustered(info) {
        // A single server stores any number and keeps one copy.
        return Err(err(format!(
            "the NATS server is not clustered: {replicas} replicas would be a number, not copies"
        )));
    }
    let mut updated = info.config.clone();
    let stamped = (!updated.metadata.contains_key(INCARNATION_KEY)).then(|| created_ns(info));
    if let Some(incarnation) = stamped {
        updated
            .metadata
            .insert(INCARNATION_KEY.to_owned(), incarnation.to_string());
    }
    let before = updated.num_replicas;
    updated.num_replicas = before.max(replicas);
    if stamped.is_some() || updated.num_replicas != before {
        js.update_stream(updated.clone())
            .await
            .map_err(|e| err(format!("cannot update its configuration: {e}")))?;
    }
    Ok(StreamUpgrade {
        replicas: (before, updated.num_replicas),
        stamped,
    })
}

/// The stream's incarnation and first remaining sequence, read now (not from a cache):
/// what tells whether a tombstone still protects anything.
pub async fn incarnation_and_first_seq(
    stream: &stream::Stream,
) -> Result<(u64, u64), RuntimeError> {
    let info = stream.get_info().await.map_err(|e| RuntimeError::Stream {
        stream: stream.cached_info().config.name.clone(),
        message: format!("reading its state: {e}"),
    })?;
    Ok((incarnation_of(&info), info.state.first_sequence))
}

/// Gets the stream (creating it when `create` and missing) and checks that the server kept
/// every field we rely on: older servers silently drop fields they do not know.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
    create: bool,
) -> Result<stream::Stream, RuntimeError> {
    let err = |message: String| RuntimeError::Stream {
        stream: settings.name.clone(),
        message,
    };
    let mut stream = match js.get_stream(&settings.name).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            if !create {
                return Err(err(format!(
                    "does not exist ({e}) and creating it is not allowed"
                )));
            }
            match js.create_stream(settings.config()).await {
                Ok(created) => created,
                // Another watcher created it first (each stamps its own incarnation, so the
                // server calls it another configuration): use theirs. (On a cluster JetStream
                // may instead let this create time out; the caller retries and finds it.)
                Err(e)
                    if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) =>
                {
                    js.get_stream(&settings.name)
                        .await
                        .map_err(|e| err(format!("cannot read: {e}")))?
                }
                Err(e) => return Err(err(format!("cannot create: {e}"))),
            }
        }
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let info = stream
        .info()
        .await
        .map_err(|e| err(format!("cannot read info: {e}")))?;
    let cfg = &info.config;
    // An aggregate that sources per-cluster streams has no subjects of its own.
    let sourced = cfg.sources.as_ref().is_some_and(|s| !s.is_empty());
    for subject in settings.subjects.iter().filter(|_| !sourced) {
        if !cfg.subjects.iter().any(|s| s == subject) {
            return Err(err(format!(
                "does not capture subject {subject} (it has {:?})",
                cfg.subjects
            )));
        }
    }
    if cfg.duplicate_window.is_zero() {
        return Err(err(
            "has no duplicate window: Nats-Msg-Id de-duplication is off".into(),
        ));
    }
    if cfg.storage != stream::StorageType::File {
        return Err(err(
            "is not file-backed: events would not survive a restart".into(),
        ));
    }
    if settings.replicas > 1 && !clustered(info) {
        tracing::warn!(stream = %settings.name, asked = settings.replicas,
                       "--stream-replicas asks for copies but the NATS server is not clustered: the stream has one");
    }
    if !cfg.metadata.contains_key(INCARNATION_KEY) || cfg.num_replicas < settings.replicas {
        tracing::warn!(stream = %settings.name, replicas = cfg.num_replicas, asked = settings.replicas,
                       stamped = cfg.metadata.contains_key(INCARNATION_KEY),
                       "the stream has fewer replicas than asked or no incarnation stamp: run `ksrctl stream-upgrade` (operator credentials)");
    }
    Ok(stream)
}

/// Creates (or updates) the durable pull consumer one publisher kind's replicas share.
pub async fn durable_consumer(
    stream: &stream::Stream,
    durable: &str,
    args: &ConsumerArgs,
) -> Result<consumer::PullConsumer, RuntimeError> {
    let config = consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("kube-service-router projection".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: args.ack_wait,
        max_ack_pending: args.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        filter_subject: ksr_proto::subject::all_filter(),
        // Transient failures are retried forever (with negative-ack backoff); poison is
        // terminated explicitly, so no event is ever dropped by a delivery limit.
        max_deliver: -1,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| RuntimeError::Consumer {
            consumer: durable.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_nats_urls_are_several_servers() {
        let servers = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.2:4223").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        assert!(server_addrs("").is_err());
        assert!(server_addrs("nats://a:notaport").is_err());
    }
}
