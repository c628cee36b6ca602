//! Command-line and environment configuration of `ksr-watcher`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use ksr_runtime::config::{
    AdminArgs, LogArgs, NatsArgs, ReplicasArgs, parse_dns_label, parse_duration,
};

use crate::normalize::AddressMode;
use crate::source::kube::KubeArgs;
use ksr_proto::selector::LabelSelector;

/// Where Services are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The Kubernetes API (kubeconfig, in-cluster service account, or --kube-url).
    Kubernetes,
    /// A directory of Service / EndpointSlice manifests (--manifests).
    Files,
}

/// Watches labelled Services and publishes their routes to the JetStream stream.
#[derive(Debug, Clone, Parser)]
#[command(name = "ksr-watcher", version = ksr_runtime::build_info::version(), about)]
pub struct Config {
    /// This cluster's name (a DNS label); it prefixes every subject and Msg-Id.
    #[arg(long = "cluster", env = "KSR_CLUSTER", value_parser = parse_dns_label)]
    pub cluster: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Create the stream when missing (otherwise wait for it).
    #[arg(long = "create-stream", env = "KSR_CREATE_STREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_stream: bool,
    #[command(flatten)]
    pub stream_replicas: ReplicasArgs,
    /// The stream captures only this cluster's subjects (`ksr.routes.<cluster>.>`), so each
    /// cluster can have its own stream and an aggregate stream sources them all.
    #[arg(long = "cluster-stream", env = "KSR_CLUSTER_STREAM")]
    pub cluster_stream: bool,
    /// How long the stream keeps events (0: forever, the default — the stream is the audit log).
    #[arg(long = "stream-max-age", env = "KSR_STREAM_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    pub stream_max_age: Duration,
    /// Where Services come from.
    #[arg(
        long = "source",
        env = "KSR_SOURCE",
        value_enum,
        default_value = "kubernetes"
    )]
    pub source: SourceKind,
    /// Manifest directory for `--source files`.
    #[arg(
        long = "manifests",
        env = "KSR_MANIFESTS",
        required_if_eq("source", "files")
    )]
    pub manifests: Option<PathBuf>,
    /// How often the manifest directory is checked for changes.
    #[arg(long = "manifests-poll", env = "KSR_MANIFESTS_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub manifests_poll: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Label selector of routed Services (vulcaningress's KUBE_SELECTOR; URL-encoded values
    /// such as `type%3Dingress` are accepted).
    #[arg(long = "selector", env = "KUBE_SELECTOR", default_value = "type=ingress", value_parser = parse_selector)]
    pub selector: LabelSelector,
    /// Only these namespaces (comma-separated; default: all).
    #[arg(long = "namespaces", env = "KSR_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Never these namespaces (comma-separated).
    #[arg(
        long = "exclude-namespaces",
        env = "KSR_EXCLUDE_NAMESPACES",
        value_delimiter = ','
    )]
    pub exclude_namespaces: Vec<String>,
    /// The environment part of hostnames (vulcaningress's ENVIRONMENT_NAME).
    #[arg(long = "environment", env = "ENVIRONMENT_NAME", default_value = "test", value_parser = parse_dns_label)]
    pub environment: String,
    /// The domain part of hostnames (vulcaningress's DOMAIN).
    #[arg(long = "domain", env = "DOMAIN", default_value = "service.consul", value_parser = parse_domain)]
    pub domain: String,
    /// Domains under which a `host` annotation may be a full hostname, routed exactly
    /// (comma-separated, e.g. `mydomain.com,example.org`; default: none, so `host` is only
    /// ever the first label). Ownership of such a hostname follows the same rule as any other.
    #[arg(
        long = "allowed-host-domains",
        env = "KSR_ALLOWED_HOST_DOMAINS",
        value_delimiter = ',',
        value_parser = parse_domain
    )]
    pub allowed_host_domains: Vec<String>,
    /// The largest event one Service may produce, in bytes (NATS refuses payloads over its
    /// max_payload, 1 MiB by default); a larger Service is rejected with reason `too_large`.
    #[arg(long = "max-event-bytes", env = "KSR_MAX_EVENT_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_event_bytes: u32,
    /// Where traffic goes: the clusterIP, the ready endpoints, or node addresses at the nodePort.
    #[arg(
        long = "address-mode",
        env = "KSR_ADDRESS_MODE",
        value_enum,
        default_value = "cluster-ip"
    )]
    pub address_mode: AddressMode,
    /// Node addresses for `--address-mode node-port` (comma-separated).
    #[arg(
        long = "node-addresses",
        env = "KSR_NODE_ADDRESSES",
        value_delimiter = ',',
        required_if_eq("address_mode", "node-port")
    )]
    pub node_addresses: Vec<IpAddr>,
    /// Removals one full diff (start-up, relist) may always publish; beyond this count and
    /// `--max-removal-percent`, removals wait for `ksrctl confirm-removals`.
    #[arg(long = "max-removals", env = "KSR_MAX_REMOVALS", default_value_t = 5)]
    pub max_removals: usize,
    /// The share of the cluster's routed Services (percent) one full diff may remove beyond
    /// `--max-removals` without confirmation.
    #[arg(long = "max-removal-percent", env = "KSR_MAX_REMOVAL_PERCENT", default_value_t = 30, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_removal_percent: u8,
    /// Take over `--cluster` although the stream holds it for another cluster (its events
    /// carry another identity: another apiserver's kube-system UID, another directory).
    /// Without it such a watcher refuses to publish.
    #[arg(long = "adopt-cluster", env = "KSR_ADOPT_CLUSTER")]
    pub adopt_cluster: bool,
    /// Publish every removal a full diff finds, however many (no confirmation needed).
    #[arg(long = "allow-mass-removal", env = "KSR_ALLOW_MASS_REMOVAL")]
    pub allow_mass_removal: bool,
    /// Each Service is published at most once per window: a change after a quiet window goes
    /// out at once, further changes within the window wait for its end and become one event.
    #[arg(long = "coalesce-window", env = "KSR_COALESCE_WINDOW", default_value = "50ms", value_parser = parse_duration)]
    pub coalesce_window: Duration,
    /// Who observes (recorded in every event): vulcaningress's POD_NAME.
    #[arg(long = "observer", env = "POD_NAME", default_value = "ksr-watcher")]
    pub observer: String,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

fn parse_domain(s: &str) -> Result<String, String> {
    ksr_proto::names::validate_domain(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_selector(s: &str) -> Result<LabelSelector, String> {
    let decoded = s
        .replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%2C", ",")
        .replace("%2c", ",")
        .replace("%21", "!")
        .replace("%28", "(")
        .replace("%29", ")")
        .replace("%20", " ");
    if decoded.trim().is_empty() {
        return Err("the selector must not be empty: it decides which Services are routed".into());
    }
    decoded
        .parse()
        .map_err(|e: ksr_proto::selector::SelectorError| e.to_string())
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
    fn vulcaningress_environment_names_still_work() {
        let c = Config::try_parse_from(["x", "--cluster", "east", "--selector", "type%3Dingress"])
            .unwrap();
        assert_eq!(c.selector.as_str(), "type=ingress");
    }

    #[test]
    fn invalid_values_name_their_flag() {
        for (args, flag) in [
            (vec!["x", "--cluster", "East.1"], "--cluster"),
            (
                vec!["x", "--cluster", "e", "--domain", "bad..domain"],
                "--domain",
            ),
            (
                vec!["x", "--cluster", "e", "--source", "files"],
                "--manifests",
            ),
            (
                vec!["x", "--cluster", "e", "--address-mode", "node-port"],
                "--node-addresses",
            ),
        ] {
            let err = Config::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
