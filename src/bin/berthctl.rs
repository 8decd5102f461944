//! berthctl: berth's command-line client, in the spirit of containerd's `ctr`. Talks to berthd over
//! its socket through berth's own API (proto/berth/v1).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use berth::admin::proto::{self, berth_client::BerthClient};
use clap::{Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Command-line client for berthd")]
struct Cli {
    /// berthd's socket.
    #[arg(long, short = 'a', global = true, env = "BERTH_ADDRESS", default_value = "/run/berth/berth.sock")]
    address: PathBuf,
    /// Engine namespace (CRI uses k8s.io).
    #[arg(long, short = 'n', global = true, env = "BERTH_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Client and server versions.
    Version,
    /// Manage images.
    #[command(alias = "image", alias = "i")]
    Images {
        #[command(subcommand)]
        cmd: ImagesCmd,
    },
    /// Inspect the content store.
    Content {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Inspect snapshots.
    #[command(alias = "snapshot")]
    Snapshots {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Inspect namespaces.
    #[command(alias = "ns")]
    Namespaces {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Run garbage collection now.
    Gc,
}

#[derive(Subcommand)]
enum ListOnly {
    /// List them.
    #[command(alias = "list")]
    Ls,
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Pull an image, with live progress.
    Pull {
        reference: String,
        /// Registry credentials, user:password.
        #[arg(long, short = 'u')]
        user: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls,
    /// Remove images.
    #[command(alias = "remove", alias = "del")]
    Rm {
        names: Vec<String>,
        /// Run garbage collection before returning.
        #[arg(long)]
        sync: bool,
    },
    /// Import images from an OCI layout tarball or a `docker save` archive ("-" for stdin).
    Import { file: PathBuf },
    /// Export images as an OCI layout tarball (also loadable by `docker load`; "-" for stdout).
    Export { file: PathBuf, names: Vec<String> },
}

async fn connect(path: PathBuf) -> Result<BerthClient<Channel>> {
    let p = path.clone();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to berthd at {}", path.display()))?;
    Ok(BerthClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn human(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n >= 1 << 30 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", b / 1024.0),
        n => format!("{n} B"),
    }
}

fn labels(l: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = l.iter().collect();
    sorted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn print_images(cli: &Cli, images: Vec<proto::Image>) {
    if cli.output == Output::Json {
        return json(serde_json::Value::Array(
            images
                .iter()
                .map(|i| {
                    let t = i.target.clone().unwrap_or_default();
                    serde_json::json!({"name": i.name, "type": t.media_type, "digest": t.digest, "size": i.size,
                        "config_digest": i.config_digest, "labels": i.labels, "created_at": i.created_at})
                })
                .collect(),
        ));
    }
    let rows = images
        .into_iter()
        .map(|i| {
            let t = i.target.unwrap_or_default();
            vec![i.name, t.media_type, t.digest, human(i.size), labels(&i.labels)]
        })
        .collect();
    table(&["REF", "TYPE", "DIGEST", "SIZE", "LABELS"], rows);
}

/// The progress bar of a layer in `status` (the engine's word: downloading, exists, unpacked,
/// already unpacked…). Only a download has a rate: a layer found in place jumps to full at once,
/// and a rate over no time would claim hundreds of GiB/s.
fn layer_template(status: &str) -> &'static str {
    if status == "downloading" {
        "{prefix:.bold} {msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{prefix:.bold} {msg:>16} [{bar:30}] {total_bytes}"
    }
}

async fn pull(
    cli: &Cli,
    client: &mut BerthClient<Channel>,
    reference: &str,
    user: Option<&str>,
) -> Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let credentials = match user {
        Some(u) => {
            let (username, password) = u.split_once(':').context("--user must be user:password")?;
            Some(proto::Credentials {
                username: username.into(),
                password: password.into(),
                ..Default::default()
            })
        }
        None => None,
    };
    let req = proto::PullImageRequest {
        namespace: cli.namespace.clone(),
        reference: reference.into(),
        credentials,
    };
    let mut stream = client.pull_image(req).await?.into_inner();
    let multi = MultiProgress::new();
    let style = |template: &str| {
        ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
    };
    // Per layer: its bar and the template it shows.
    let mut bars: BTreeMap<String, (ProgressBar, &str)> = BTreeMap::new();
    while let Some(p) = stream.message().await? {
        for l in &p.layers {
            let template = layer_template(&l.status);
            let (bar, shown) = bars.entry(l.digest.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(l.total.max(0) as u64));
                b.set_style(style(template));
                b.set_prefix(l.digest.trim_start_matches("sha256:").chars().take(12).collect::<String>());
                (b, template)
            });
            if *shown != template {
                bar.set_style(style(template));
                *shown = template;
            }
            bar.set_position(l.offset.max(0) as u64);
            bar.set_message(l.status.clone());
        }
        if p.done {
            for (b, _) in bars.values() {
                b.finish();
            }
            if cli.output == Output::Json {
                json(serde_json::json!({"name": p.name, "digest": p.digest, "image_id": p.image_id}));
            } else {
                println!("{}: pulled {} (image id {})", p.name, p.digest, p.image_id);
            }
            return Ok(());
        }
    }
    bail!("pull stream ended before the pull was done")
}

async fn run(cli: Cli) -> Result<()> {
    let mut client = connect(cli.address.clone()).await?;
    let ns = cli.namespace.clone();
    match &cli.command {
        Command::Version => {
            let v = client.version(proto::VersionRequest {}).await?.into_inner();
            if cli.output == Output::Json {
                json(serde_json::json!({"client": env!("CARGO_PKG_VERSION"), "server": v.version}));
            } else {
                println!(
                    "Client:\n  Version: {}\nServer:\n  Version: {}",
                    env!("CARGO_PKG_VERSION"),
                    v.version
                );
            }
        }
        Command::Images { cmd: ImagesCmd::Pull { reference, user } } => {
            pull(&cli, &mut client, reference, user.as_deref()).await?
        }
        Command::Images { cmd: ImagesCmd::Ls } => {
            let r = client.list_images(proto::ListImagesRequest { namespace: ns }).await?.into_inner();
            print_images(&cli, r.images);
        }
        Command::Images { cmd: ImagesCmd::Rm { names, sync } } => {
            for name in names {
                let r = client
                    .remove_image(proto::RemoveImageRequest {
                        namespace: ns.clone(),
                        name: name.clone(),
                        sync: *sync,
                    })
                    .await?
                    .into_inner();
                if r.removed {
                    println!("{name}");
                } else {
                    eprintln!("{name}: not found");
                }
            }
        }
        Command::Images { cmd: ImagesCmd::Import { file } } => {
            let reader: Box<dyn Read + Send> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<proto::ImportChunk>(4);
            let ns2 = ns.clone();
            let reader_task = tokio::task::spawn_blocking(move || -> Result<()> {
                let mut reader = reader;
                let mut first = true;
                loop {
                    let mut buf = vec![0u8; 256 * 1024];
                    let n = reader.read(&mut buf).context("reading archive")?;
                    if n == 0 && !first {
                        return Ok(());
                    }
                    buf.truncate(n);
                    let chunk = proto::ImportChunk {
                        namespace: if first { ns2.clone() } else { String::new() },
                        data: buf,
                    };
                    first = false;
                    if tx.blocking_send(chunk).is_err() || n == 0 {
                        return Ok(());
                    }
                }
            });
            let r = client.import_images(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            reader_task.await??;
            print_images(&cli, r?.into_inner().images);
        }
        Command::Images { cmd: ImagesCmd::Export { file, names } } => {
            let req = proto::ExportImagesRequest { namespace: ns, names: names.clone() };
            let mut stream = client.export_images(req).await?.into_inner();
            let mut out: Box<dyn Write> = if file.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?)
            };
            while let Some(c) = stream.message().await? {
                out.write_all(&c.data)?;
            }
            out.flush()?;
        }
        Command::Content { cmd: ListOnly::Ls } => {
            let r = client.list_content(proto::ListContentRequest {}).await?.into_inner();
            if cli.output == Output::Json {
                {
                    json(serde_json::json!(
                    r.content
                        .iter()
                        .map(|c| serde_json::json!({"digest": c.digest, "size": c.size, "labels": c.labels}))
                        .collect::<Vec<_>>()
                ));
                    return Ok(());
                }
            }
            let rows =
                r.content.into_iter().map(|c| vec![c.digest, human(c.size), labels(&c.labels)]).collect();
            table(&["DIGEST", "SIZE", "LABELS"], rows);
        }
        Command::Snapshots { cmd: ListOnly::Ls } => {
            let r = client.list_snapshots(proto::ListSnapshotsRequest {}).await?.into_inner();
            if cli.output == Output::Json {
                {
                    json(
                        serde_json::json!({"snapshotter": r.snapshotter, "snapshots": r.snapshots.iter().map(|s| serde_json::json!({
                    "key": s.key, "parent": s.parent, "kind": s.kind, "size": s.size, "inodes": s.inodes, "labels": s.labels})).collect::<Vec<_>>()}),
                    );
                    return Ok(());
                }
            }
            let rows =
                r.snapshots.into_iter().map(|s| vec![s.key, s.parent, s.kind, human(s.size)]).collect();
            table(&["KEY", "PARENT", "KIND", "SIZE"], rows);
        }
        Command::Namespaces { cmd: ListOnly::Ls } => {
            let r = client.list_namespaces(proto::ListNamespacesRequest {}).await?.into_inner();
            if cli.output == Output::Json {
                {
                    json(serde_json::json!(r.namespaces));
                    return Ok(());
                }
            }
            table(&["NAME"], r.namespaces.into_iter().map(|n| vec![n]).collect());
        }
        Command::Gc => {
            let r = client.garbage_collect(proto::GarbageCollectRequest {}).await?.into_inner();
            if cli.output == Output::Json {
                {
                    json(serde_json::json!({"content": r.content_removed, "snapshots": r.snapshots_removed,
                    "leases": r.leases_removed, "ingests": r.ingests_removed}));
                    return Ok(());
                }
            }
            println!(
                "removed {} blobs, {} snapshots, {} expired leases, {} abandoned downloads",
                r.content_removed, r.snapshots_removed, r.leases_removed, r.ingests_removed
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("berthctl: {}", s.message()),
                None => eprintln!("berthctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_downloads_show_a_rate() {
        assert!(layer_template("downloading").contains("{bytes_per_sec}"));
        for status in ["waiting", "exists", "downloaded", "unpacking", "unpacked", "already unpacked"] {
            assert!(!layer_template(status).contains("per_sec"), "{status}");
            // The engine's word is what the bar says.
            assert!(layer_template(status).contains("{msg"), "{status}");
        }
    }
}
