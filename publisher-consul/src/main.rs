//! `ksr-publisher-consul`: parse config, start telemetry, run until SIGTERM.

use clap::Parser;

use ksr_publisher_consul::{app, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ksr_runtime::telemetry::init(&config.log, "ksr-publisher-consul")?;
    ksr_runtime::tls::install_crypto_provider();
    let shutdown = ksr_runtime::shutdown::on_signal();
    app::run(config, shutdown).await?;
    Ok(())
}
