//! `ksrctl`: parse the command line, run one command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ksrctl::history::{self, At, Filter};

#[derive(Debug, Parser)]
#[command(name = "ksrctl", version, about = "kube-service-router operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the event stream is.
#[derive(Debug, Clone, Args)]
struct StreamArgs {
    /// NATS server URL.
    #[arg(
        long = "nats-url",
        env = "KSR_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// The stream holding the route events.
    #[arg(long = "stream", env = "KSR_STREAM", default_value = "KSR_ROUTES")]
    stream: String,
    /// `table` for people, `json` for one JSON object per line.
    #[arg(long = "output", short = 'o', default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The routes vulcand serves (from etcd) and what Consul DNS answers for each host.
    Routes {
        /// etcd endpoint (host:port).
        #[arg(
            long = "etcd-endpoints",
            env = "KSR_ETCD_ENDPOINTS",
            default_value = "127.0.0.1:2379"
        )]
        etcd: String,
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
        stream: StreamArgs,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// Service name glob (`web*`).
        #[arg(long)]
        name: Option<String>,
        /// Only these kinds (added, updated, removed); repeatable.
        #[arg(long, value_parser = ["added", "updated", "removed"])]
        kind: Vec<String>,
        /// From this instant (`#seq`, RFC 3339 time, or `2h`/`7d` ago).
        #[arg(long)]
        since: Option<String>,
        /// Up to this instant.
        #[arg(long)]
        until: Option<String>,
        /// Newest first (default: oldest first).
        #[arg(long)]
        newest_first: bool,
    },
    /// The complete routing table at an instant (default: now), from the stream alone.
    State {
        #[command(flatten)]
        stream: StreamArgs,
        /// `#seq`, RFC 3339 time, or `2h`/`7d` ago.
        #[arg(long)]
        at: Option<String>,
    },
    /// Routes that appeared, disappeared or changed between two instants.
    Diff {
        #[command(flatten)]
        stream: StreamArgs,
        from: String,
        to: String,
    },
}

async fn read_stream(
    args: &StreamArgs,
    filter: &str,
) -> anyhow::Result<Vec<ksr_runtime::replay::Latest>> {
    let client = async_nats::connect(args.nats_url.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(&args.stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", args.stream))?;
    let records = ksr_runtime::replay::all_events(&stream, filter).await?;
    for r in &records {
        if let Err((reason, message)) = &r.event {
            eprintln!(
                "ksrctl: skipping unreadable event at sequence {} on {} ({reason}): {message}",
                r.seq, r.subject
            );
        }
    }
    Ok(records)
}

fn instant(s: &str) -> anyhow::Result<At> {
    history::parse_instant(s, history::now_ns()).map_err(|e| anyhow::anyhow!(e))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Routes {
            etcd,
            prefix,
            consul_dns,
            watch,
        } => {
            let client = etcd_client::Client::connect([etcd.as_str()], None).await?;
            let mut last = String::new();
            loop {
                let routes = ksrctl::routes::read(&mut client.kv_client(), &prefix).await?;
                let mut answers = BTreeMap::new();
                for r in &routes {
                    answers.insert(
                        r.host.clone(),
                        ksrctl::routes::resolve(consul_dns, &r.host).await,
                    );
                }
                let table = ksrctl::routes::render(&routes, &answers);
                if table != last {
                    if watch {
                        println!("--- {} routes ---", routes.len());
                    }
                    print!("{table}");
                    last = table;
                }
                if !watch {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
        Command::Events {
            stream,
            cluster,
            namespace,
            name,
            kind,
            since,
            until,
            newest_first,
        } => {
            let filter = Filter {
                cluster,
                namespace,
                name,
                kinds: kind
                    .iter()
                    .filter_map(|k| ksr_proto::EventKind::parse(k))
                    .collect(),
                since: since.as_deref().map(instant).transpose()?,
                until: until.as_deref().map(instant).transpose()?,
            };
            let records = read_stream(&stream, &filter.subject()).await?;
            let mut rows: Vec<_> = records
                .iter()
                .filter(|r| filter.matches(r))
                .filter_map(|r| history::event_row(r).ok())
                .collect();
            if newest_first {
                rows.reverse();
            }
            if stream.output == "json" {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", history::event_table(&rows));
            }
        }
        Command::State { stream, at } => {
            let at = at
                .as_deref()
                .map(instant)
                .transpose()?
                .unwrap_or(At::Seq(u64::MAX));
            let records = read_stream(&stream, &ksr_proto::subject::all_filter()).await?;
            let state = history::state_at(&records, at);
            if stream.output == "json" {
                for r in state.values() {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                print!("{}", history::state_table(&state));
            }
        }
        Command::Diff { stream, from, to } => {
            let (from, to) = (instant(&from)?, instant(&to)?);
            let records = read_stream(&stream, &ksr_proto::subject::all_filter()).await?;
            let changes = history::diff(
                &history::state_at(&records, from),
                &history::state_at(&records, to),
            );
            if stream.output == "json" {
                for c in &changes {
                    println!("{}", serde_json::to_string(c)?);
                }
            } else {
                print!("{}", history::diff_text(&changes));
            }
        }
    }
    Ok(())
}
