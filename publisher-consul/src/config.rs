//! Command-line and environment configuration of `ksr-publisher-consul`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use ksr_runtime::config::{
    AdminArgs, ConsumerArgs, LogArgs, NatsArgs, parse_dns_label, parse_duration,
};

/// Registers kube-service-router's routed Services in the Consul catalog (Consul DNS).
#[derive(Debug, Clone, Parser)]
#[command(name = "ksr-publisher-consul", version = ksr_runtime::build_info::version(), about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub router_health: RouterHealthArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Which Consul target: Consul, the routers, and whose registrations (the publisher and
/// ksrctl share these, and open the target from them the same way:
/// [`crate::projector::open`]).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub consul: ConsulArgs,
    #[command(flatten)]
    pub router: RouterArgs,
    /// Names the installation: our KV prefix is `ksr/<owner>/consul/`.
    #[arg(long = "owner", env = "KSR_OWNER", default_value = "ksr", value_parser = parse_dns_label)]
    pub owner: String,
}

impl TargetArgs {
    /// Where our records live in Consul KV.
    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.owner)
    }

    /// The planning target (an error names `--router-address`).
    pub fn target(&self) -> Result<crate::target::ConsulTarget, crate::Error> {
        self.router.target(&self.owner)
    }
}

/// The edge routers every routed name resolves to, the environment they serve and the node
/// our entries live on.
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// The edge routers' addresses (repeat the flag or separate with commas; at most 8):
    /// every routed name resolves to each of them that is healthy. The first router's entries
    /// live on `--consul-node`, each further one's on `<node>-<address>`.
    #[arg(
        long = "router-address",
        env = "KSR_ROUTER_ADDRESS",
        default_value = "127.0.0.1",
        value_delimiter = ','
    )]
    pub router_addresses: Vec<IpAddr>,
    /// The edge routers' HTTP port.
    #[arg(long = "router-port", env = "KSR_ROUTER_PORT", default_value_t = 80)]
    pub router_port: u16,
    /// Environment the router itself is registered for (service `vulcan`, tagged with it);
    /// vulcaningress's ENVIRONMENT_NAME.
    #[arg(long = "environment", env = "ENVIRONMENT_NAME", default_value = "test", value_parser = parse_dns_label)]
    pub environment: String,
    /// The synthetic catalog node our registrations live on (default: the owner); one node
    /// per router (see --router-address). Reconciliation only ever touches these nodes.
    #[arg(long = "consul-node", env = "KSR_CONSUL_NODE", value_parser = parse_dns_label)]
    pub node: Option<String>,
}

impl RouterArgs {
    /// The planning target of installation `owner` (an error names `--router-address` when
    /// the addresses are repeated or too many).
    pub fn target(&self, owner: &str) -> Result<crate::target::ConsulTarget, crate::Error> {
        let node = self.node.clone().unwrap_or_else(|| owner.to_owned());
        Ok(crate::target::ConsulTarget {
            owner: owner.to_owned(),
            routers: crate::routers::routers(&node, &self.router_addresses)?,
            router_port: self.router_port,
        })
    }
}

/// How the publisher learns which routers are up (publisher only: ksrctl never probes).
#[derive(Debug, Clone, Args)]
pub struct RouterHealthArgs {
    /// A URL that answers 2xx while a router is healthy, `{address}` standing for each
    /// router's address (e.g. `http://{address}:8182/v2/status`, vulcand's status on its API
    /// port). Each router's node then carries a health check the publisher keeps current, and
    /// Consul DNS answers only with healthy routers. Without it every router is answered.
    #[arg(long = "router-health-url", env = "KSR_ROUTER_HEALTH_URL", value_parser = crate::router_health::parse_url_template)]
    pub url: Option<String>,
    /// How often each router is probed.
    #[arg(long = "router-health-interval", env = "KSR_ROUTER_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    #[arg(long = "router-health-timeout", env = "KSR_ROUTER_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Consecutive failed probes that mark a router critical (one success marks it passing).
    #[arg(long = "router-health-failures", env = "KSR_ROUTER_HEALTH_FAILURES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub failures: u32,
}

impl RouterHealthArgs {
    /// The health URL template for `routers` routers (None: no health checking); one URL
    /// without `{address}` cannot judge several routers.
    pub fn template(&self, routers: usize) -> Result<Option<String>, crate::Error> {
        match &self.url {
            Some(url) if routers > 1 && !url.contains("{address}") => {
                Err(crate::Error::Config(format!(
                    "--router-health-url {url:?} has no {{address}}: every router would be judged by one URL"
                )))
            }
            url => Ok(url.clone()),
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

    #[test]
    fn router_addresses_come_repeated_or_comma_separated() {
        let c = Config::try_parse_from([
            "x",
            "--router-address",
            "10.0.0.1,10.0.0.2",
            "--router-address",
            "fd00::3",
        ])
        .unwrap();
        let t = c.target.router.target("ksr").unwrap();
        let nodes: Vec<_> = t.routers.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["ksr", "ksr-10-0-0-2", "ksr-fd00--3"]);
        let c = Config::try_parse_from(["x", "--router-address", "10.0.0.1,10.0.0.1"]).unwrap();
        let err = c.target.router.target("ksr").unwrap_err().to_string();
        assert!(err.contains("--router-address"), "{err}");
    }

    #[test]
    fn one_health_url_for_several_routers_needs_the_address() {
        let c = Config::try_parse_from([
            "x",
            "--router-address",
            "10.0.0.1,10.0.0.2",
            "--router-health-url",
            "http://edge:8182/v2/status",
        ])
        .unwrap();
        let err = c.router_health.template(2).unwrap_err().to_string();
        assert!(err.contains("--router-health-url"), "{err}");
        assert!(c.router_health.template(1).unwrap().is_some());
    }

    #[test]
    fn an_invalid_health_url_names_the_flag() {
        for bad in [
            "not a url",
            "ftp://{address}/",
            "http://{address}:8182/{other}",
        ] {
            let err = Config::try_parse_from(["x", "--router-health-url", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--router-health-url"), "{bad}: {err}");
        }
    }
}
