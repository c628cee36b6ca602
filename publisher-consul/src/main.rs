//! `ksr-publisher-consul`: parse config, set up the process (telemetry, TLS), run until SIGTERM.

use clap::Parser;

use ksr_publisher_consul::{app, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ksr_runtime::process::init(&config.log, "ksr-publisher-consul")?;
    app::run(config, ksr_runtime::shutdown::on_signal()).await?;
    Ok(())
}
