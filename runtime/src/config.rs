//! Command-line groups every process flattens into its own clap config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// How to reach NATS and which stream holds the events.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "KSR_NATS_URL",
        id = "nats_url",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// The JetStream stream that holds the route events.
    #[arg(long = "stream", env = "KSR_STREAM", id = "nats_stream", default_value = ksr_proto::subject::DEFAULT_STREAM)]
    pub stream: String,
    /// NATS credentials file (JWT + NKey, decentralized auth), if the server requires one.
    #[arg(
        long = "nats-creds",
        env = "KSR_NATS_CREDS",
        id = "nats_creds",
        conflicts_with = "nats_nkey"
    )]
    pub creds: Option<PathBuf>,
    /// File holding this process's NKey seed (`SU…`), for servers that list users by public
    /// NKey (`ksrctl nats-auth` writes one per role).
    #[arg(long = "nats-nkey", env = "KSR_NATS_NKEY", id = "nats_nkey")]
    pub nkey: Option<PathBuf>,
    /// CA certificate to verify the NATS server's TLS certificate; enables TLS.
    #[arg(long = "nats-ca", env = "KSR_NATS_CA", id = "nats_ca")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (`verify: true`).
    #[arg(
        long = "nats-cert",
        env = "KSR_NATS_CERT",
        id = "nats_cert",
        requires = "nats_key"
    )]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) of --nats-cert.
    #[arg(
        long = "nats-key",
        env = "KSR_NATS_KEY",
        id = "nats_key",
        requires = "nats_cert"
    )]
    pub key: Option<PathBuf>,
}

/// How many copies JetStream keeps of what a process creates (the route stream, the
/// checkpoint bucket): 1 on a single server, 3 on a three-node cluster to survive the loss of
/// any one node. An existing stream keeps its replicas (`ksrctl stream-upgrade` raises them).
#[derive(Debug, Clone, Copy, Args)]
pub struct ReplicasArgs {
    /// Replicas of the JetStream stream (or bucket) this process creates; at most the number of
    /// NATS servers in the cluster.
    #[arg(long = "stream-replicas", env = "KSR_STREAM_REPLICAS", id = "stream_replicas", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
}

/// Where the admin server listens.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Address for `/livez`, `/readyz` and `/metrics`.
    #[arg(
        long = "admin-addr",
        env = "KSR_ADMIN_ADDR",
        id = "admin_addr",
        default_value = "127.0.0.1:9090"
    )]
    pub addr: SocketAddr,
}

/// Log output.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter, in `tracing` env-filter syntax.
    #[arg(
        long = "log",
        env = "KSR_LOG",
        id = "log_filter",
        default_value = "info"
    )]
    pub filter: String,
    /// `text` for people, `json` for log pipelines.
    #[arg(long = "log-format", env = "KSR_LOG_FORMAT", id = "log_format", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour codes only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// A flag's value that cannot be used (a certificate that does not parse, an address that is
/// no URL): which flag (and value), and why, typed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct FlagError {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Maps an error about flag `what` (e.g. `--consul-ca <path>`) to a [`FlagError`].
pub fn flag<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> FlagError {
    let what = what.into();
    move |e| FlagError {
        what,
        source: Box::new(e),
    }
}

/// The durable consumer every replica of publisher kind `publisher` (`vulcand`, `consul`) of
/// installation `owner` shares, unless `--consumer` names another: `ksr-<publisher>-<owner>`.
pub fn default_durable(publisher: &str, owner: &str) -> String {
    format!("ksr-{publisher}-{owner}")
}

/// The consumer a publisher's reconciliation pulls the stream's newest events through
/// (`<durable>_replay`, one replica at a time; `ksr_runtime::stream_pass`). The `_` keeps it
/// apart from every default durable (owners are DNS labels), so the permission to pull from
/// and delete it grants nothing on another installation's consumer.
pub fn replay_consumer(durable: &str) -> String {
    format!("{durable}_replay")
}

/// How a publisher consumes the stream.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// `sync` applies removals; `upsert-only` never deletes from the target.
    #[arg(
        long = "policy",
        env = "KSR_POLICY",
        id = "consumer_policy",
        value_enum,
        default_value = "sync"
    )]
    pub policy: ksr_projection::Policy,
    /// Durable consumer name, shared by every replica of one publisher kind.
    #[arg(long = "consumer", env = "KSR_CONSUMER", id = "consumer_durable")]
    pub durable: Option<String>,
    /// Most messages taken into one batch.
    #[arg(long = "batch-size", env = "KSR_BATCH_SIZE", id = "consumer_batch_size", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Most unacknowledged messages the consumer hands out (across all replicas).
    #[arg(
        long = "max-ack-pending",
        env = "KSR_MAX_ACK_PENDING",
        id = "consumer_max_ack_pending",
        default_value_t = 20_000
    )]
    pub max_ack_pending: i64,
    /// How long a delivered message may stay unacknowledged before redelivery.
    #[arg(long = "ack-wait", env = "KSR_ACK_WAIT", id = "consumer_ack_wait", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Longest negative-ack delay for transient failures (delays grow exponentially up to it).
    #[arg(long = "max-retry-delay", env = "KSR_MAX_RETRY_DELAY", id = "consumer_max_retry_delay", default_value = "30s", value_parser = parse_duration)]
    pub max_retry_delay: Duration,
    /// How often to reconcile the target with the stream (0 disables the periodic pass).
    #[arg(long = "reconcile-interval", env = "KSR_RECONCILE_INTERVAL", id = "consumer_reconcile_interval", default_value = "5m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// How long shutdown may take to finish the batch in hand.
    #[arg(long = "drain-timeout", env = "KSR_DRAIN_TIMEOUT", id = "consumer_drain_timeout", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// A clap value parser for names that must be one DNS label (cluster, owner, environment):
/// lower-case letters, digits and '-', at most 63 bytes.
pub fn parse_dns_label(s: &str) -> Result<String, String> {
    ksr_proto::names::validate_cluster(s)
        .map(|_| s.to_owned())
        .map_err(|_| {
            format!("{s:?} must be a DNS label (lower-case letters, digits, '-'; at most 63)")
        })
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `7d` (and a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 5m, 2h or 7d"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
