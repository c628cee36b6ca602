//! Command-line and environment configuration of `ksr-publisher-consul`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser};

use ksr_runtime::config::{AdminArgs, ConsumerArgs, LogArgs, NatsArgs, parse_dns_label};

/// Registers kube-service-router's routed Services in the Consul catalog (Consul DNS).
#[derive(Debug, Clone, Parser)]
#[command(name = "ksr-publisher-consul", version = ksr_runtime::build_info::version(), about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub consul: ConsulArgs,
    #[command(flatten)]
    pub router: RouterArgs,
    /// Names this installation: our KV prefix is `ksr/<owner>/consul/`.
    #[arg(long = "owner", env = "KSR_OWNER", default_value = "ksr", value_parser = parse_dns_label)]
    pub owner: String,
    /// The synthetic catalog node our registrations live on (default: the owner). One node
    /// per installation: reconciliation only ever touches this node.
    #[arg(long = "consul-node", env = "KSR_CONSUL_NODE", value_parser = parse_dns_label)]
    pub node: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The edge router every routed name resolves to, and the environment it serves.
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// The edge router's address: every routed name resolves to it.
    #[arg(
        long = "router-address",
        env = "KSR_ROUTER_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub router_address: IpAddr,
    /// The edge router's HTTP port.
    #[arg(long = "router-port", env = "KSR_ROUTER_PORT", default_value_t = 80)]
    pub router_port: u16,
    /// Environment the router itself is registered for (service `vulcan`, tagged with it);
    /// vulcaningress's ENVIRONMENT_NAME.
    #[arg(long = "environment", env = "ENVIRONMENT_NAME", default_value = "test", value_parser = parse_dns_label)]
    pub environment: String,
}

impl RouterArgs {
    /// The planning target of installation `owner`.
    pub fn target(&self, owner: &str) -> crate::target::ConsulTarget {
        crate::target::ConsulTarget {
            owner: owner.to_owned(),
            router_address: self.router_address.to_string(),
            router_port: self.router_port,
        }
    }
}

/// How to reach Consul.
#[derive(Debug, Clone, Args)]
pub struct ConsulArgs {
    /// Consul HTTP API address (vulcaningress's CONSUL_API_ADDRESS; a path such as
    /// `/v1/agent/service/register` is ignored).
    #[arg(
        long = "consul-address",
        env = "CONSUL_API_ADDRESS",
        default_value = "http://127.0.0.1:8500"
    )]
    pub address: String,
    /// ACL token, sent as X-Consul-Token (vulcaningress's CONSUL_API_TOKEN).
    #[arg(
        long = "consul-token",
        env = "CONSUL_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "consul_token_file"
    )]
    pub token: Option<String>,
    /// File holding the ACL token; re-read on every request, so a rotated token takes effect
    /// without a restart.
    #[arg(
        long = "consul-token-file",
        env = "KSR_CONSUL_TOKEN_FILE",
        id = "consul_token_file"
    )]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify Consul's HTTPS certificate.
    #[arg(long = "consul-ca", env = "KSR_CONSUL_CA", id = "consul_ca")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for a Consul that verifies HTTPS clients
    /// (`verify_incoming_https`).
    #[arg(
        long = "consul-cert",
        env = "KSR_CONSUL_CERT",
        id = "consul_cert",
        requires = "consul_key"
    )]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) of --consul-cert.
    #[arg(
        long = "consul-key",
        env = "KSR_CONSUL_KEY",
        id = "consul_key",
        requires = "consul_cert"
    )]
    pub key: Option<PathBuf>,
}

impl Config {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| self.owner.clone())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn an_invalid_environment_names_the_flag() {
        let err = Config::try_parse_from(["x", "--environment", "Not Valid"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--environment"), "{err}");
    }
}
