//! Dev-only test bench: guards for real servers (nats-server, etcd, Consul) and helpers.
//!
//! Each guard spawns the real binary installed by `scripts/setup.sh` on free loopback ports
//! with its own temp dir, waits until it answers (polling with a deadline, no fixed sleeps),
//! and kills it and removes the dir on drop. Guards can be stopped and restarted on the same
//! ports and data for fault tests. A missing binary fails with the setup command to run.

pub use ksrctl::dns;

pub mod apiserver;
mod binaries;
pub mod consul;
pub mod etcd;
pub mod events;
pub mod http;
pub mod memstore;
pub mod model;
pub mod nats;
mod ports;
pub mod process;
pub mod recorder;
pub mod replica;
pub mod scenario;
pub mod tls;
pub mod verify;
pub mod wait;

pub use binaries::{server_binary, workspace_root};
pub use consul::{ConsulCluster, ConsulMember, ConsulOptions, ConsulServer};
pub use etcd::{EtcdCluster, EtcdOptions, EtcdServer};
pub use nats::{NatsCluster, NatsOptions, NatsServer};
pub use ports::free_ports;
pub use process::Proc;
pub use replica::Replica;
pub use wait::{eventually, wait_until};

/// A reqwest client for plain-HTTP loopback calls in tests (installs the ring TLS provider).
pub fn http_client() -> reqwest::Client {
    ksr_runtime::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("reqwest client without TLS settings always builds")
}

/// Panics with the first differing entries when `got` and `want` differ (`what` names them).
pub fn assert_same_entries(
    what: &str,
    got: &std::collections::BTreeMap<String, String>,
    want: &std::collections::BTreeMap<String, String>,
) {
    if got != want {
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(v))
            .take(5)
            .collect();
        panic!(
            "{what} differs from the rebuild ({} vs {} entries)\nmissing/different: {missing:#?}\nextra/different: {extra:#?}",
            got.len(),
            want.len()
        );
    }
}

/// A binary of this workspace, built next to the running test (`cargo test --workspace` and
/// `cargo nextest run --workspace` build every package's binaries).
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    Ok(path)
}
