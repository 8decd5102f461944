//! berth-shim: the per-pod shim. `start` makes sure a shim serves the pod directory (spawning a
//! detached one if needed) and prints its socket path; `serve` is that shim. See `berth::shim`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use berth::shim::{self, ShimCommand, ShimConfig};

fn run() -> Result<()> {
    let (command, config) = ShimConfig::parse(std::env::args_os().skip(1))
        .context("usage: berth-shim start|serve|cleanup --id ID --dir DIR --runtime BIN [--runtime-root DIR] [--runtime-arg ARG]... [--log-line-max N]")?;
    // The shim's stderr is its log file (`shim.log` once detached): plain lines, no colours.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    match command {
        ShimCommand::Start => {
            let socket =
                shim::start(&config).with_context(|| format!("starting the shim of pod {}", config.id))?;
            println!("{}", socket.display());
        }
        ShimCommand::Serve => shim::serve(config).context("serving")?,
        ShimCommand::Cleanup => shim::reclaim::cleanup(config).context("cleaning up after a dead shim")?,
    }
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread exists: the OCI runtime inherits it (see SHIM_UMASK); the shim's own
    // files get explicit private modes.
    berth::fsutil::set_umask(berth::fsutil::SHIM_UMASK);
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
