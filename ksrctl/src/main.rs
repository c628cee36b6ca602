//! `ksrctl`: parse the command line, run one command.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ksrctl", version, about = "kube-service-router operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    }
}
