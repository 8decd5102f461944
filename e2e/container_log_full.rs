//! The log directory fills up (issue 14 item 5): a container writes 1 KB lines on and on into a
//! log on a small tmpfs, and a filler file takes the rest of the tmpfs. The container keeps running
//! and its writes never block (it gets far past a pipe's worth of lines while nothing can be
//! written); what the log could not take is counted in the metric; once the filler is gone, new
//! lines appear again after one marker record whose counts are exactly the lines missing, with no
//! torn record anywhere; ReopenContainerLog after a rename then moves the output to a new file
//! without losing a line, and the metric's series go with the container.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::cri::api::ContainerState;

use crate::harness::leaks::assert_back_to;
use crate::harness::metrics::scrape;
use crate::harness::{Berthd, Leaks, Registry, images};

/// Bytes of padding on each line: with "line <n> " a line is about 1 KB.
const PAD: usize = 990;
/// Lines the container must write while the log is full: well past what a 64 KiB pipe holds, so
/// a shim that stopped draining would have blocked the container long before.
const LINES_WHILE_FULL: u64 = 300;

/// A tmpfs mounted over a directory, lazily unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", dir.display()));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes zeros into `path` until the filesystem has no room left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// The value of `berth_container_log_dropped_<what>_total` for container `id` (0 without a series).
fn dropped_metric(port: u16, what: &str, id: &str) -> u64 {
    let prefix = format!("berth_container_log_dropped_{what}_total{{container_id=\"{id}\",");
    scrape(port).first_with_prefix(&prefix).map_or(0, |v| v as u64)
}

/// One log record.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    /// `stdout F line <n> <pad>`.
    Line(u64),
    /// berth's marker: records and bytes dropped.
    Marker(u64, u64),
}

/// Parses the log; panics on any record that is not a whole line of the container's or a marker
/// (a torn record would be one).
fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let pad = "0".repeat(PAD);
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_ts, stream, tag, rest) =
                (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
            assert_eq!(tag, Some("F"), "not a full record: {l:?}");
            match stream {
                Some("stdout") => {
                    let (n, p) =
                        rest.strip_prefix("line ").and_then(|r| r.split_once(' ')).unwrap_or(("", ""));
                    assert_eq!(p, pad, "a torn or mixed line: {l:?}");
                    Record::Line(n.parse().unwrap_or_else(|e| panic!("bad line number in {l:?}: {e}")))
                }
                Some("stderr") => {
                    let counts = rest
                        .strip_prefix("berth: ")
                        .and_then(|r| r.split_once(" log records ("))
                        .and_then(|(records, r)| {
                            Some((
                                records,
                                r.split_once(
                                    " bytes) of this container were dropped: writing the log failed: ",
                                )?,
                            ))
                        })
                        .map(|(records, (bytes, why))| (records.parse().ok(), bytes.parse().ok(), why));
                    match counts {
                        Some((Some(records), Some(bytes), why))
                            if why.starts_with("No space left on device") =>
                        {
                            Record::Marker(records, bytes)
                        }
                        _ => panic!("not a marker: {l:?}"),
                    }
                }
                _ => panic!("bad record {l:?}"),
            }
        })
        .collect()
}

/// The content bytes of line `n`.
fn line_bytes(n: u64) -> u64 {
    format!("line {n} ").len() as u64 + PAD as u64
}

/// Polls `cond` every 100 ms until it holds; `what` says what never happened (a hang guard).
async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "never {what} (within {timeout:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_directory_drops_counts_and_resumes() {
    let reg = Registry::shared();
    let mut berthd = Berthd::with_network();
    let port = berthd.serve_metrics();
    berthd.trust(reg);
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("log-full");
    let tmpfs = Tmpfs::mount(&pod.log_directory(), "2m");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    let script = format!(
        "pad=$(printf '%0{PAD}d' 0); i=0; \
         while true; do i=$((i+1)); echo \"line $i $pad\"; echo $i > /tmp/count; sleep 0.02; done"
    );
    let c = pod.container("writer", &image).sh(&script).build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container");
    let log = pod.log_directory().join("writer/0.log");
    wait_until("10 lines in the log", Duration::from_secs(30), async || records(&log).len() >= 10).await;

    // The tmpfs fills up: the shim starts dropping.
    let filler = tmpfs.0.join("filler");
    fill(&filler);
    wait_until("a dropped record in the metric", Duration::from_secs(60), async || {
        dropped_metric(port, "records", &id) > 0
    })
    .await;
    // The shell truncates the file before each write: an empty read is read again.
    let count = async |cri: &mut crate::harness::Cri| -> u64 {
        loop {
            let out = cri.sh(&id, "cat /tmp/count").await;
            if let Ok(n) = out.trim().parse() {
                return n;
            }
            assert!(out.trim().is_empty(), "bad count {out:?}");
        }
    };
    let full_at = count(&mut cri).await;
    let full_len = std::fs::metadata(&log).expect("the log").len();
    wait_until("the container writing on while the log is full", Duration::from_secs(120), async || {
        count(&mut cri).await >= full_at + LINES_WHILE_FULL
    })
    .await;
    let status = cri.container_status(&id).await.expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    assert_eq!(std::fs::metadata(&log).expect("the log").len(), full_len, "the full log grew");

    // Space returns: the marker, then the lines again.
    std::fs::remove_file(&filler).expect("removing the filler");
    wait_until("lines after the marker", Duration::from_secs(60), async || {
        let r = records(&log);
        r.iter().position(|r| matches!(r, Record::Marker(..))).is_some_and(|m| r.len() >= m + 3)
    })
    .await;
    let r = records(&log);
    let markers: Vec<usize> = (0..r.len()).filter(|&i| matches!(r[i], Record::Marker(..))).collect();
    assert_eq!(markers.len(), 1, "one gap, one marker: {r:?}");
    let m = markers[0];
    let Record::Marker(records_dropped, bytes_dropped) = r[m] else { unreachable!() };
    let lines = |rs: &[Record]| -> Vec<u64> {
        rs.iter().map(|r| if let Record::Line(n) = r { *n } else { panic!("{r:?}") }).collect()
    };
    let (before_gap, after_gap) = (lines(&r[..m]), lines(&r[m + 1..]));
    assert_eq!(before_gap, (1..=before_gap.len() as u64).collect::<Vec<_>>(), "lost before the gap");
    let (last, next) = (*before_gap.last().expect("lines before the gap"), after_gap[0]);
    assert!(
        next > full_at + LINES_WHILE_FULL,
        "line {next} after the gap was written while the log was full"
    );
    assert_eq!(after_gap, (next..next + after_gap.len() as u64).collect::<Vec<_>>(), "lost after the gap");
    assert_eq!(records_dropped, next - last - 1, "the marker's count is not the lines missing");
    assert_eq!(bytes_dropped, (last + 1..next).map(line_bytes).sum::<u64>(), "the marker's bytes");
    assert!(records_dropped >= LINES_WHILE_FULL);
    assert_eq!(dropped_metric(port, "records", &id), records_dropped);
    assert_eq!(dropped_metric(port, "bytes", &id), bytes_dropped);

    // The kubelet's rotation afterwards: rename, ReopenContainerLog; not a line lost.
    let rotated = cri.rotate_log(&id, &log).await.expect("ReopenContainerLog");
    wait_until("lines in the new log", Duration::from_secs(30), async || {
        log.exists() && records(&log).len() >= 3
    })
    .await;
    let old = lines(&records(&rotated)[m + 1..]);
    let new = lines(&records(&log));
    assert_eq!(new[0], old.last().expect("lines in the rotated log") + 1, "lost across the reopen");
    assert_eq!(new, (new[0]..new[0] + new.len() as u64).collect::<Vec<_>>());

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_eq!(dropped_metric(port, "records", &id), 0, "the series outlived the container");
    drop(tmpfs);
    assert_back_to(&berthd, &before);
}
