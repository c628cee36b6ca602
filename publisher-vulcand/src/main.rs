//! `ksr-publisher-vulcand`: parse config, set up the process (telemetry, TLS), run until SIGTERM.

use clap::Parser;

use ksr_publisher_vulcand::{app, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ksr_runtime::process::init(&config.log, "ksr-publisher-vulcand")?;
    app::run(config, ksr_runtime::shutdown::on_signal()).await?;
    Ok(())
}
