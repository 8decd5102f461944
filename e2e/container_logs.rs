//! Container logs in the kubelet's CRI format, at the path the kubelet chose: one record per line,
//! `<RFC3339Nano> <stdout|stderr> <F|P> <text>`; a line longer than `cri.max_container_log_line_size`
//! (64 bytes here) is cut into `P` records of exactly that size and a final `F`; after the kubelet
//! renames the file and calls ReopenContainerLog, new lines go to a new file at the same path.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

const LIMIT: usize = 64;

/// One parsed log record.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    stream: String,
    tag: String,
    text: String,
}

/// Whether `ts` is an RFC 3339 timestamp with optional fractional seconds (what Go's RFC3339Nano
/// layout produces and parses).
fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return false;
    }
    if !(b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') && rest.as_bytes()[3] == b':')
}

/// Parses a CRI log file; panics on a malformed record.
fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (ts, stream, tag) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let text = parts.next().unwrap_or("").to_string();
            assert!(is_rfc3339_nano(ts), "bad timestamp {ts:?} in {line:?}");
            assert!(matches!(stream, "stdout" | "stderr"), "bad stream in {line:?}");
            assert!(matches!(tag, "F" | "P"), "bad tag in {line:?}");
            Record { stream: stream.into(), tag: tag.into(), text }
        })
        .collect()
}

async fn wait_for(path: &Path, what: &str, pred: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = records(path);
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{}: never {what}; records: {r:#?}", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn timestamps_are_checked() {
    assert!(is_rfc3339_nano("2024-05-01T10:11:12.123456789Z"));
    assert!(is_rfc3339_nano("2024-05-01T10:11:12Z"));
    assert!(is_rfc3339_nano("2024-05-01T10:11:12.5+02:00"));
    assert!(!is_rfc3339_nano("2024-05-01 10:11:12Z"));
    assert!(!is_rfc3339_nano("2024-05-01T10:11:12.Z"));
    assert!(!is_rfc3339_nano("1714558272"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_format_partial_lines_and_reopen() {
    let reg = Registry::shared();
    let mut berthd = Berthd::with_network();
    berthd.config.cri.max_container_log_line_size = LIMIT;
    berthd.trust(reg);
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("logs");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");

    // 200 bytes on one line: three P records of 64 and an F of 8.
    let long: String = (0..200).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let script = format!(
        "echo $GREETING; echo to-stderr >&2; echo {long}; \
         while true; do if [ -f /tmp/go ]; then rm /tmp/go; echo after-reopen; echo err-after-reopen >&2; fi; \
         sleep 0.1; done"
    );
    let c = pod.container("talker", &image).sh(&script).env("GREETING", "to-stdout").build();
    let id = cri.create_start(&pod_id, &pod, c).await.expect("container");
    let status = cri.container_status(&id).await.expect("ContainerStatus");
    let log = pod.log_directory().join("talker/0.log");
    assert_eq!(Path::new(&status.log_path), log, "log_path must be the full path");

    let r = wait_for(&log, "held the long line", |r| r.iter().filter(|r| r.stream == "stdout").count() >= 5)
        .await;
    let rec = |stream: &str, tag: &str, text: &str| Record {
        stream: stream.into(),
        tag: tag.into(),
        text: text.into(),
    };
    let stdout: Vec<Record> = r.iter().filter(|r| r.stream == "stdout").cloned().collect();
    let stderr: Vec<Record> = r.iter().filter(|r| r.stream == "stderr").cloned().collect();
    assert_eq!(
        stdout,
        vec![
            rec("stdout", "F", "to-stdout"),
            rec("stdout", "P", &long[..64]),
            rec("stdout", "P", &long[64..128]),
            rec("stdout", "P", &long[128..192]),
            rec("stdout", "F", &long[192..]),
        ]
    );
    assert_eq!(stderr, vec![rec("stderr", "F", "to-stderr")]);

    // The kubelet's rotation: rename, then ReopenContainerLog.
    let rotated = cri.rotate_log(&id, &log).await.expect("ReopenContainerLog");
    assert!(log.exists(), "ReopenContainerLog did not create a new file at {}", log.display());
    cri.sh(&id, "touch /tmp/go").await;
    let mut new = wait_for(&log, "got the lines written after the reopen", |r| r.len() >= 2).await;
    // stdout and stderr are separate pipes: their records may come in either order.
    new.sort_by(|a, b| a.stream.cmp(&b.stream));
    assert_eq!(new, vec![rec("stderr", "F", "err-after-reopen"), rec("stdout", "F", "after-reopen")]);
    let old = records(&rotated);
    assert_eq!(old.len(), 6, "the rotated file changed after the reopen: {old:#?}");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    // The log directory belongs to the kubelet: it stays.
    assert!(log.exists() && rotated.exists());
    assert_back_to(&berthd, &before);
}
