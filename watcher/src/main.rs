//! `ksr-watcher`: parse config, set up the process (telemetry, TLS), run until SIGTERM.

use clap::Parser;

use ksr_watcher::{app, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ksr_runtime::process::init(&config.log, "ksr-watcher")?;
    app::run(config, ksr_runtime::shutdown::on_signal()).await?;
    Ok(())
}
