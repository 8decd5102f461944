//! berthd: the node daemon. Parses arguments, loads and validates the configuration (touching nothing
//! on disk before it is valid), sets up logging, takes the root lock and serves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use berth::config::{self, Config, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berthd", version, about = "Berth: a container runtime for Kubernetes nodes (CRI v1)")]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Log level or filter; overrides RUST_LOG and the configuration.
    #[arg(long, short = 'l', global = true)]
    log_level: Option<String>,
    /// Log format: text or json; overrides the configuration.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, commented.
    Default,
    /// Print the effective configuration after merging the file.
    Dump,
}

fn load(cli: &Cli) -> Result<Config> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    Ok(Config::load(&path, required)?)
}

fn init_logging(cli: &Cli, config: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::try_new(level).context("invalid --log-level")?,
        (None, Ok(env)) if !env.is_empty() => EnvFilter::try_new(env).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(&config.debug.level).context("invalid debug.level")?,
    };
    let json = match cli.log_format.as_deref() {
        Some(f) => f == "json",
        None => config.debug.format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Command::Config { what: ConfigCommand::Default }) => {
            print!("{}", config::DEFAULT_TOML);
            return Ok(());
        }
        Some(Command::Config { what: ConfigCommand::Dump }) => {
            print!("{}", load(&cli)?.dump());
            return Ok(());
        }
        None => {}
    }
    let config = load(&cli)?;
    init_logging(&cli, &config)?;
    berth::mem::configure_allocator();
    let workers = std::thread::available_parallelism().map(|n| n.get().min(4)).unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("berthd")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&config.root)
            .with_context(|| format!("creating {}", config.root.display()))?;
        let _lock = berth::server::RootLock::acquire(&config.lock_path())?;
        let socket = config.grpc.address.clone();
        let (uid, gid) = (config.grpc.uid, config.grpc.gid);
        // The socket appears only once every component is ready: a client that can connect can be served.
        let daemon = berth::server::Daemon::build(config).await?;
        let listener = berth::server::bind_socket(&socket, uid, gid)?;
        tracing::info!(socket = %socket.display(), version = env!("CARGO_PKG_VERSION"), "berthd serving");
        // A Type=notify unit is started once the socket accepts connections (they queue until serve).
        if let Err(e) = berth::server::notify_ready() {
            tracing::warn!("{e:#}");
        }
        let r = daemon.serve(listener, berth::server::shutdown_signal()).await;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("berthd stopped");
        r
    })
}

fn main() -> ExitCode {
    // Before any thread exists (the umask is per process): everything berthd creates is private
    // unless the code that creates it says otherwise.
    berth::fsutil::set_umask(berth::fsutil::DAEMON_UMASK);
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
