//! `ksrctl`'s command line.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use ksr_runtime::config::{default_durable, parse_dns_label};

#[derive(Debug, Parser)]
#[command(
    name = "ksrctl",
    version = ksr_runtime::build_info::version(),
    about = "kube-service-router operator tool"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the event stream is, and how to reach it (the processes' own flags: URLs,
/// credentials, TLS).
pub use ksr_runtime::config::NatsArgs;

/// Where routing-table checkpoints are kept (written by `ksrctl checkpoint`).
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// Object store bucket holding the routing-table checkpoints.
    #[arg(
        long = "checkpoint-bucket",
        env = "KSR_CHECKPOINT_BUCKET",
        default_value = "KSR_CHECKPOINTS"
    )]
    pub bucket: String,
}

/// How a history read finds its starting point.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
    /// Replay from the stream's first event, ignoring checkpoints.
    #[arg(long = "no-checkpoints", env = "KSR_NO_CHECKPOINTS")]
    pub no_checkpoints: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, stable field names (for jq).
    Json,
    /// `events` only: what each event changed versus the previous event of its Service.
    Diff,
}

/// `--output`, defaulting to a table on a terminal and JSON lines when piped.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// table, json or (events) diff [default: table on a terminal, json otherwise].
    #[arg(long = "output", short = 'o', env = "KSR_OUTPUT", value_enum)]
    pub output: Option<Output>,
}

impl OutputArgs {
    pub fn resolve(&self) -> Output {
        use std::io::IsTerminal;
        self.output.unwrap_or(if std::io::stdout().is_terminal() {
            Output::Table
        } else {
            Output::Json
        })
    }
}

/// Which events to show.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Service name glob (`web*`).
    #[arg(long)]
    pub name: Option<String>,
    /// Only these kinds; repeatable.
    #[arg(long, value_enum)]
    pub kind: Vec<Kind>,
    /// From this instant (`#seq`, RFC 3339 time, or `2h`/`7d` ago).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this instant.
    #[arg(long, conflicts_with = "follow")]
    pub until: Option<String>,
}

/// An event kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Added,
    Updated,
    Removed,
}

impl From<Kind> for ksr_proto::EventKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Added => Self::Added,
            Kind::Updated => Self::Updated,
            Kind::Removed => Self::Removed,
        }
    }
}

/// How to reach vulcand's etcd, and whose keys to look at.
#[derive(Debug, Clone, Args)]
pub struct VulcandTargetArgs {
    #[command(flatten)]
    pub target: ksr_publisher_vulcand::config::TargetArgs,
    /// The publisher's durable consumer, for its lag (default: ksr-vulcand-<owner>).
    #[arg(long = "durable", env = "KSR_DURABLE")]
    pub durable: Option<String>,
}

impl VulcandTargetArgs {
    /// The publisher's durable consumer.
    pub fn durable(&self) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| default_durable("vulcand", &self.target.owner))
    }
}

/// How to reach Consul, and whose registrations to look at.
#[derive(Debug, Clone, Args)]
pub struct ConsulTargetArgs {
    #[command(flatten)]
    pub target: ksr_publisher_consul::config::TargetArgs,
    /// The publisher's durable consumer, for its lag (default: ksr-consul-<owner>).
    #[arg(long = "durable", env = "KSR_DURABLE")]
    pub durable: Option<String>,
}

impl ConsulTargetArgs {
    /// The publisher's durable consumer.
    pub fn durable(&self) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| default_durable("consul", &self.target.owner))
    }

    /// The environment the routers serve.
    pub fn environment(&self) -> &str {
        &self.target.router.environment
    }
}

/// A projection target.
#[derive(Debug, Subcommand)]
pub enum Target {
    /// vulcand's keys in etcd.
    Vulcand {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        target: VulcandTargetArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The Consul catalog.
    Consul {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        target: ConsulTargetArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The routes vulcand serves (from etcd) and what Consul DNS answers for each host.
    Routes {
        #[command(flatten)]
        etcd: ksr_publisher_vulcand::config::EtcdArgs,
        /// vulcand's key prefix.
        #[arg(
            long = "vulcand-prefix",
            env = "KSR_VULCAND_PREFIX",
            default_value = "vulcand"
        )]
        prefix: String,
        /// Consul's DNS address.
        #[arg(
            long = "consul-dns",
            env = "KSR_CONSUL_DNS",
            default_value = "127.0.0.1:8600"
        )]
        consul_dns: SocketAddr,
        /// Keep watching and print the table again whenever it changes (until Ctrl-C).
        #[arg(long, env = "KSR_WATCH")]
        watch: bool,
    },
    /// The history of routing changes, filtered.
    Events {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// Newest first (default: oldest first).
        #[arg(long, conflicts_with = "follow")]
        newest_first: bool,
        /// After the history, keep printing new events as they are stored (until Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// The complete routing table at an instant (default: now), from the stream alone.
    State {
        #[command(flatten)]
        stream: NatsArgs,
        /// `#seq`, RFC 3339 time, or `2h`/`7d` ago.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        replay: ReplayArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Routes that appeared, disappeared or changed between two instants.
    Diff {
        #[command(flatten)]
        stream: NatsArgs,
        /// The earlier instant (`#seq`, RFC 3339 time, or `2h`/`7d` ago).
        from: String,
        /// The later instant.
        to: String,
        #[command(flatten)]
        replay: ReplayArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stores the routing table every N events, so `state --at` and `diff` replay only the
    /// events after the nearest checkpoint.
    Checkpoint {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
        #[command(flatten)]
        replicas: ksr_runtime::config::ReplicasArgs,
        /// A checkpoint every this many stream sequences.
        #[arg(
            long = "every",
            env = "KSR_CHECKPOINT_EVERY",
            default_value_t = 100_000,
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        every: u64,
        /// After catching up, keep writing checkpoints as events arrive (until Ctrl-C or
        /// SIGTERM).
        #[arg(long, short = 'f', env = "KSR_FOLLOW")]
        follow: bool,
    },
    /// Compares a target with the stream's current state; exits 1 on drift.
    Verify {
        #[command(subcommand)]
        target: Target,
    },
    /// Writes the stream's current state into a target through the publishers' fenced apply.
    Rebuild {
        /// Print what would change, change nothing.
        #[arg(long, global = true)]
        dry_run: bool,
        #[command(subcommand)]
        target: Target,
    },
    /// Raises the stream's replicas to --stream-replicas (never lowers them; JetStream copies it
    /// online) and stamps its incarnation if it has none (a stream made before this release,
    /// or by hand). Operator credentials: the watchers may only create the stream.
    StreamUpgrade {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        replicas: ksr_runtime::config::ReplicasArgs,
    },
    /// Releases the removals a watcher of CLUSTER holds back (its mass-removal guard): use it
    /// when the Services really are gone.
    ConfirmRemovals {
        #[command(flatten)]
        stream: NatsArgs,
        /// The cluster whose watcher holds removals.
        #[arg(long = "cluster", value_parser = ksr_runtime::config::parse_dns_label)]
        cluster: String,
    },
    /// Removes every route of a decommissioned cluster (publishes `Removed` for each of its
    /// live Services); refuses while a watcher of that cluster runs.
    RetireCluster {
        #[command(flatten)]
        stream: NatsArgs,
        /// The cluster to retire.
        #[arg(value_parser = ksr_runtime::config::parse_dns_label)]
        cluster: String,
    },
    /// Writes one NKey seed per role (`<role>.nk`, kept when already there) and
    /// `ksr-auth.conf`, the nats-server `authorization` block that limits each role to the
    /// subjects it needs (see the README's *Security*).
    NatsAuth {
        /// Directory for the seeds and the configuration.
        #[arg(long = "out")]
        out: std::path::PathBuf,
        /// The clusters that get a watcher role, comma-separated.
        #[arg(long = "clusters", required = true, value_delimiter = ',', value_parser = ksr_runtime::config::parse_dns_label)]
        clusters: Vec<String>,
        /// The installation (publisher `--owner`), which names the durable consumers.
        #[arg(long = "owner", env = "KSR_OWNER", default_value = "ksr", value_parser = parse_dns_label)]
        owner: String,
        /// The stream.
        #[arg(long = "stream", env = "KSR_STREAM", default_value = ksr_proto::subject::DEFAULT_STREAM)]
        stream: String,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
    },
    /// The whole story of one Service: its events in the stream and what each publisher last
    /// reported doing with it (serving it, keeping it waiting behind an older claim and whose,
    /// or refusing it).
    Explain {
        #[command(flatten)]
        stream: NatsArgs,
        /// The Service: CLUSTER/NAMESPACE/NAME.
        #[arg(value_parser = parse_service)]
        service: ksr_proto::ServiceKey,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The stream, its consumers' lag, each cluster's last event, the newest checkpoint.
    Status {
        #[command(flatten)]
        stream: NatsArgs,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Parses `CLUSTER/NAMESPACE/NAME` (three DNS labels).
fn parse_service(s: &str) -> Result<ksr_proto::ServiceKey, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [cluster, namespace, name] = parts[..] else {
        return Err(format!("{s:?} is not CLUSTER/NAMESPACE/NAME"));
    };
    for part in [cluster, namespace, name] {
        ksr_runtime::config::parse_dns_label(part)?;
    }
    Ok(ksr_proto::ServiceKey::new(cluster, namespace, name))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn explain_takes_one_service_as_cluster_namespace_name() {
        assert!(parse_service("east/shop/web").is_ok());
        for bad in ["east/web", "east/shop/web/x", "east/Shop/web", "east//web"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn follow_and_newest_first_exclude_each_other() {
        let err = Cli::try_parse_from(["ksrctl", "events", "--follow", "--newest-first"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--newest-first"), "{err}");
    }
}
