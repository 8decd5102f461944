//! The CRI container log writer: turns the bytes a container writes on stdout and stderr into the
//! lines the kubelet reads, `<timestamp> <stdout|stderr> <F|P> <content>\n`, appended to the log path
//! the kubelet chose.
//!
//! Behaviour follows containerd's `redirectLogs` (pkg/cri/io/logger.go): a line longer than the
//! limit is cut into `P` (partial) records of exactly `limit` bytes followed by a final `F` record;
//! a line of exactly `limit` bytes is one `F` record; an unterminated line at end of stream is
//! written as `P` records, never as `F`; an empty line is an `F` record with empty content. Unlike
//! containerd, a `\r` before the `\n` is kept as content (as conmon does): the log shows what the
//! container wrote. Content bytes are passed through unchanged (no UTF-8 validation). Each record
//! is written with one `write` on an `O_APPEND` file, so stdout and stderr records interleave line
//! by line and never mix inside a line.
//!
//! This module must never block on the container: write errors are logged and the output is still
//! drained, so a full disk cannot stall a container on a full pipe.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Context, Error, Result};

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream name as written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Receives complete log records from a [`LineSplitter`].
pub trait RecordSink {
    /// One record: `partial` selects the `P` tag over `F`; `content` has no trailing newline.
    fn record(&mut self, stream: Stream, partial: bool, content: &[u8]);
}

/// Cuts one stream's bytes into records of at most `max` content bytes. Keeps the unterminated
/// tail of the last line (never more than `max` bytes between calls).
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    max: usize,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// `max` is the longest record content; 0 is treated as 1.
    pub fn new(stream: Stream, max: usize) -> LineSplitter {
        LineSplitter { stream, max: max.max(1), pending: Vec::new() }
    }

    /// Feeds bytes read from the stream, emitting every record they complete.
    pub fn feed(&mut self, mut data: &[u8], sink: &mut dyn RecordSink) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let line = &data[..nl];
            if self.pending.is_empty() {
                self.emit_line(line, sink);
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(line);
                self.emit_line(&joined, sink);
                joined.clear();
                self.pending = joined; // keep the allocation
            }
            data = &data[nl + 1..];
        }
        if data.is_empty() {
            return;
        }
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while self.pending.len() - start > self.max {
            sink.record(self.stream, true, &self.pending[start..start + self.max]);
            start += self.max;
        }
        self.pending.drain(..start);
    }

    /// End of stream: an unterminated tail is written as partial records.
    pub fn finish(&mut self, sink: &mut dyn RecordSink) {
        for chunk in self.pending.chunks(self.max) {
            sink.record(self.stream, true, chunk);
        }
        self.pending = Vec::new();
    }

    fn emit_line(&self, mut line: &[u8], sink: &mut dyn RecordSink) {
        while line.len() > self.max {
            sink.record(self.stream, true, &line[..self.max]);
            line = &line[self.max..];
        }
        sink.record(self.stream, false, line);
    }
}

/// A container's log file. Both streams of a container share one, so their records interleave.
/// Without a path, records are discarded (the output is still drained).
#[derive(Debug)]
pub struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
    record: Vec<u8>,
    write_failed: bool,
}

impl LogFile {
    /// Opens (creating, mode 0640) the log for appending. The parent directory must exist: the
    /// kubelet creates it. The path must name a regular file, not a symlink (see [`open_append`]).
    pub fn open(path: Option<&Path>) -> Result<LogFile> {
        let file = path.map(open_append).transpose()?;
        Ok(LogFile { path: path.map(Path::to_path_buf), file, record: Vec::new(), write_failed: false })
    }

    /// Opens the path again, after the kubelet renamed the old file away. On failure the old file
    /// stays in use.
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(path) = &self.path {
            self.file = Some(open_append(path)?);
            self.write_failed = false;
        }
        Ok(())
    }

    /// Writes one record stamped with `at`.
    pub fn write_record(&mut self, at: SystemTime, stream: Stream, partial: bool, content: &[u8]) {
        let Some(file) = &mut self.file else { return };
        self.record.clear();
        format_timestamp(at, &mut self.record);
        self.record.push(b' ');
        self.record.extend_from_slice(stream.as_str().as_bytes());
        self.record.extend_from_slice(if partial { b" P " } else { b" F " });
        self.record.extend_from_slice(content);
        self.record.push(b'\n');
        match file.write_all(&self.record) {
            Ok(()) => self.write_failed = false,
            Err(e) => {
                // Once per failure streak, not once per line.
                if !self.write_failed {
                    tracing::warn!(path = ?self.path, error = %e, "writing container log failed");
                }
                self.write_failed = true;
            }
        }
        // A record of a very long line must not pin its buffer for the container's lifetime.
        if self.record.capacity() > 64 * 1024 {
            self.record = Vec::new();
        }
    }
}

impl RecordSink for LogFile {
    fn record(&mut self, stream: Stream, partial: bool, content: &[u8]) {
        self.write_record(SystemTime::now(), stream, partial, content);
    }
}

/// Opens the log for appending without following a symlink in its place (root would append a
/// container's output to whatever it points at) and refuses anything but a regular file: a FIFO
/// would block the shim (hence O_NONBLOCK, which means nothing for a regular file), a device would
/// take the output.
fn open_append(path: &Path) -> Result<File> {
    let what = || format!("opening container log {}", path.display());
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .context(what)?;
    if !file.metadata().context(what)?.is_file() {
        return Err(Error::invalid(format!("{}: not a regular file", what())));
    }
    Ok(file)
}

/// Appends `at` in Go's `time.RFC3339Nano` layout in UTC, as the kubelet parses it:
/// `2006-01-02T15:04:05.999999999Z`, trailing zeros of the fraction trimmed (and the dot too when
/// the fraction is zero).
pub fn format_timestamp(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    let mut nanos = since.subsec_nanos();
    if nanos != 0 {
        let mut digits = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{nanos:0digits$}");
    }
    out.push(b'Z');
}

// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Records(Vec<(Stream, char, Vec<u8>)>);

    impl RecordSink for Records {
        fn record(&mut self, stream: Stream, partial: bool, content: &[u8]) {
            self.0.push((stream, if partial { 'P' } else { 'F' }, content.to_vec()));
        }
    }

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(char, String)> {
        let mut s = LineSplitter::new(Stream::Stdout, max);
        let mut out = Records::default();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out.0.into_iter().map(|(_, t, c)| (t, String::from_utf8(c).unwrap())).collect()
    }

    fn rec(tag: char, s: &str) -> (char, String) {
        (tag, s.to_string())
    }

    #[test]
    fn full_lines_become_f_records() {
        assert_eq!(split(16, &[b"hello\nworld\n"]), [rec('F', "hello"), rec('F', "world")]);
        assert_eq!(split(16, &[b"\n\n"]), [rec('F', ""), rec('F', "")]);
        assert!(split(16, &[b""]).is_empty());
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(split(16, &[b"hel", b"lo", b"\nwor", b"ld\n"]), [rec('F', "hello"), rec('F', "world")]);
    }

    #[test]
    fn long_lines_are_cut_into_partial_records_at_the_limit() {
        // Exactly the limit: one full record.
        assert_eq!(split(4, &[b"abcd\n"]), [rec('F', "abcd")]);
        // One byte over: a partial of the limit, then a full of the rest.
        assert_eq!(split(4, &[b"abcde\n"]), [rec('P', "abcd"), rec('F', "e")]);
        // An exact multiple ends with a full record of a whole chunk.
        assert_eq!(split(4, &[b"abcdefgh\n"]), [rec('P', "abcd"), rec('F', "efgh")]);
        // Same lines fed one byte at a time.
        let bytes: Vec<&[u8]> = b"abcdefghij\nxy\n".chunks(1).collect();
        assert_eq!(split(4, &bytes), [rec('P', "abcd"), rec('P', "efgh"), rec('F', "ij"), rec('F', "xy")]);
    }

    #[test]
    fn splitter_keeps_at_most_the_limit_pending() {
        let mut s = LineSplitter::new(Stream::Stderr, 8);
        let mut out = Records::default();
        s.feed(&[b'x'; 100], &mut out);
        assert!(s.pending.len() <= 8);
        assert_eq!(out.0.len(), 12);
        assert!(out.0.iter().all(|(st, t, c)| *st == Stream::Stderr && *t == 'P' && c.len() == 8));
    }

    #[test]
    fn unterminated_tail_at_end_of_stream_is_partial() {
        assert_eq!(split(16, &[b"done\nno newline"]), [rec('F', "done"), rec('P', "no newline")]);
        // Longer than the limit: all partial, including the last piece.
        assert_eq!(split(4, &[b"abcdefghij"]), [rec('P', "abcd"), rec('P', "efgh"), rec('P', "ij")]);
        assert_eq!(split(4, &[b"abcdefgh"]), [rec('P', "abcd"), rec('P', "efgh")]);
    }

    #[test]
    fn crlf_is_kept_as_content() {
        assert_eq!(split(16, &[b"a\r\nb\r", b"\n"]), [rec('F', "a\r"), rec('F', "b\r")]);
        assert_eq!(split(2, &[b"ab\r\n"]), [rec('P', "ab"), rec('F', "\r")]);
    }

    #[test]
    fn invalid_utf8_passes_through() {
        let mut s = LineSplitter::new(Stream::Stdout, 16);
        let mut out = Records::default();
        s.feed(b"\xff\xfe\x00ok\xc3\n", &mut out);
        assert_eq!(out.0, [(Stream::Stdout, 'F', b"\xff\xfe\x00ok\xc3".to_vec())]);
    }

    #[test]
    fn timestamps_follow_go_rfc3339nano() {
        let at = |s: u64, n: u32| {
            let mut out = Vec::new();
            format_timestamp(UNIX_EPOCH + Duration::new(s, n), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(at(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(at(1_700_000_000, 1), "2023-11-14T22:13:20.000000001Z");
        assert_eq!(at(1_700_000_000, 100), "2023-11-14T22:13:20.0000001Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199, 999_999_999), "2024-02-29T23:59:59.999999999Z");
        assert_eq!(at(4_102_444_800, 500_000_000), "2100-01-01T00:00:00.5Z");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn records_are_written_in_cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(Some(&path)).unwrap();
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5_000);
        log.write_record(at, Stream::Stdout, false, b"hi");
        log.write_record(at, Stream::Stderr, true, b"part");
        assert_eq!(
            read(&path),
            "2023-11-14T22:13:20.000005Z stdout F hi\n2023-11-14T22:13:20.000005Z stderr P part\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn opening_appends_and_needs_the_parent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut log = LogFile::open(Some(&path)).unwrap();
        log.record(Stream::Stdout, false, b"new");
        let text = read(&path);
        assert!(text.starts_with("old\n") && text.ends_with(" stdout F new\n"), "{text:?}");

        let err = LogFile::open(Some(&dir.path().join("missing/0.log"))).unwrap_err();
        assert!(err.to_string().contains("opening container log"), "{err}");
    }

    #[test]
    fn stdout_and_stderr_interleave_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(Some(&path)).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout, 1024);
        let mut err = LineSplitter::new(Stream::Stderr, 1024);
        out.feed(b"out one\nout t", &mut log);
        err.feed(b"err one\n", &mut log);
        out.feed(b"wo\n", &mut log);
        err.feed(b"err two", &mut log);
        out.finish(&mut log);
        err.finish(&mut log);
        let lines: Vec<String> =
            read(&path).lines().map(|l| l.split_once(' ').unwrap().1.to_string()).collect();
        assert_eq!(lines, ["stdout F out one", "stderr F err one", "stdout F out two", "stderr P err two"]);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20240101");
        let mut log = LogFile::open(Some(&path)).unwrap();
        log.record(Stream::Stdout, false, b"before");
        std::fs::rename(&path, &rotated).unwrap();
        log.record(Stream::Stdout, false, b"still old");
        log.reopen().unwrap();
        log.record(Stream::Stdout, false, b"after");
        assert!(read(&rotated).ends_with(" stdout F still old\n"));
        assert_eq!(read(&rotated).lines().count(), 2);
        let new = read(&path);
        assert_eq!(new.lines().count(), 1);
        assert!(new.ends_with(" stdout F after\n"));
    }

    #[test]
    fn reopen_failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pod");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("0.log");
        let mut log = LogFile::open(Some(&path)).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        assert!(log.reopen().is_err());
        log.record(Stream::Stdout, false, b"kept");
        assert!(read(&moved.join("0.log")).ends_with(" stdout F kept\n"));
    }

    /// Issue 8 item 10: neither the first open nor a reopen follows a symlink in the log's place,
    /// and only a regular file takes the output.
    #[test]
    fn logs_never_follow_a_symlink_or_open_a_non_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shadow");
        std::fs::write(&target, "secret\n").unwrap();
        let path = dir.path().join("0.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(LogFile::open(Some(&path)).is_err());

        std::fs::remove_file(&path).unwrap();
        let mut log = LogFile::open(Some(&path)).unwrap();
        log.record(Stream::Stdout, false, b"first");
        // Rotated away, and a symlink put where the kubelet's new file would be.
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(log.reopen().is_err());
        log.record(Stream::Stdout, false, b"second");
        assert_eq!(read(&target), "secret\n");
        assert!(read(&dir.path().join("0.log.1")).ends_with(" stdout F second\n"));

        // A FIFO is refused at once rather than blocking on a reader that never comes.
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(LogFile::open(Some(&fifo)).map(|_| ())));
        // A hang guard only: the open returns at once.
        let opened = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("opening a FIFO hung");
        assert!(opened.is_err());
        assert!(LogFile::open(Some(dir.path())).is_err(), "a directory");
    }

    #[test]
    fn no_path_discards() {
        let mut log = LogFile::open(None).unwrap();
        log.record(Stream::Stdout, false, b"nowhere");
        log.reopen().unwrap();
    }
}
