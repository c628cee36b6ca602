//! Command-line and environment configuration of `ksr-publisher-vulcand`.

use std::path::PathBuf;

use clap::{Args, Parser};

use ksr_runtime::config::{AdminArgs, ConsumerArgs, LogArgs, NatsArgs, parse_dns_label};

/// Projects kube-service-router's route events into vulcand's etcd keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "ksr-publisher-vulcand", version = ksr_runtime::build_info::version(), about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Which vulcand target: etcd, where vulcand reads, and whose keys (the publisher and
/// ksrctl share these, and open the target from them the same way: [`crate::projector::open`]).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub vulcand: VulcandArgs,
    /// Names the installation: prefixes our vulcand ids (`<owner>.<host>.<hash>`) and our
    /// state (`ksr/<owner>/vulcand/`). Two installations sharing one etcd need two owners.
    #[arg(long = "owner", env = "KSR_OWNER", default_value = "ksr", value_parser = parse_dns_label)]
    pub owner: String,
}

impl TargetArgs {
    /// Where vulcand's keys and our records live.
    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.vulcand.prefix(), &self.owner)
    }
}

/// Which etcd API vulcand reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EtcdApi {
    /// vulcand ≥ 0.9 (`-etcdApiVer=3`).
    V3,
    /// vulcand v0.8, the seed's image; etcd 3.4/3.5 must run with `--enable-v2`.
    V2,
}

/// Where vulcand reads its configuration in etcd (the publisher and ksrctl share these).
#[derive(Debug, Clone, Args)]
pub struct VulcandArgs {
    /// vulcand's key prefix, as given to vulcand's -etcdKey (default: `vulcand` for v3, with
    /// no leading slash; `/vulcand` for v2).
    #[arg(long = "vulcand-prefix", env = "KSR_VULCAND_PREFIX")]
    pub prefix: Option<String>,
    /// Which etcd API vulcand reads: `v3` (vulcand ≥ 0.9, `-etcdApiVer=3`) or `v2` (vulcand
    /// v0.8, the seed's image; etcd 3.4/3.5 must run with `--enable-v2`).
    #[arg(long = "etcd-api", env = "KSR_ETCD_API", value_enum, default_value_t = EtcdApi::V3)]
    pub api: EtcdApi,
}

impl VulcandArgs {
    /// The vulcand prefix in effect: `--vulcand-prefix`, or the default of `--etcd-api`.
    pub fn prefix(&self) -> String {
        match (&self.prefix, self.api) {
            (Some(p), _) => p.clone(),
            (None, EtcdApi::V2) => "/vulcand".into(),
            (None, EtcdApi::V3) => "vulcand".into(),
        }
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (`host:port` or URLs).
    #[arg(
        long = "etcd-endpoints",
        env = "KSR_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// etcd host, used with --etcd-port when --etcd-endpoints is not given (vulcaningress's
    /// ETCD_HOST).
    #[arg(long = "etcd-host", env = "ETCD_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// etcd port (vulcaningress's ETCD_PORT).
    #[arg(long = "etcd-port", env = "ETCD_PORT", default_value_t = 2379)]
    pub port: u16,
    /// etcd user name (with --etcd-password).
    #[arg(long = "etcd-user", env = "KSR_ETCD_USER", requires = "etcd_password")]
    pub user: Option<String>,
    /// etcd password.
    #[arg(
        long = "etcd-password",
        env = "KSR_ETCD_PASSWORD",
        id = "etcd_password",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate; enables TLS.
    #[arg(long = "etcd-ca", env = "KSR_ETCD_CA", id = "etcd_ca")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "etcd-cert", env = "KSR_ETCD_CERT", requires = "etcd_key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "etcd-key", env = "KSR_ETCD_KEY", id = "etcd_key")]
    pub key: Option<PathBuf>,
    /// Largest number of operations etcd accepts in one transaction (its --max-txn-ops).
    #[arg(long = "etcd-max-txn-ops", env = "KSR_ETCD_MAX_TXN_OPS", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(8..))]
    pub max_txn_ops: u32,
}

impl EtcdArgs {
    /// The endpoints to dial.
    pub fn endpoint_list(&self) -> Vec<String> {
        if self.endpoints.is_empty() {
            vec![format!("{}:{}", self.host, self.port)]
        } else {
            self.endpoints.clone()
        }
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
    fn vulcaningress_env_names_select_the_etcd_endpoint() {
        let c = Config::try_parse_from(["x", "--etcd-host", "localhost", "--etcd-port", "4001"])
            .unwrap();
        assert_eq!(
            c.target.etcd.endpoint_list(),
            vec!["localhost:4001".to_owned()]
        );
    }

    #[test]
    fn an_invalid_owner_names_the_flag() {
        let err = Config::try_parse_from(["x", "--owner", "Bad_Owner"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--owner"), "{err}");
    }
}
