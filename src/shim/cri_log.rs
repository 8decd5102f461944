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
//! drained, so a full disk cannot stall a container on a full pipe. What could not be written is
//! counted; the first record that can be written again (space came back, or ReopenContainerLog) is
//! preceded by one marker record on stderr saying how many records and bytes were dropped and why.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

/// Output the log could not take: records (lines, or pieces of a long line) and their content bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub records: u64,
    pub bytes: u64,
}

impl Dropped {
    fn add(&mut self, content: &[u8]) {
        self.records += 1;
        self.bytes += content.len() as u64;
    }
}

/// Where a log's records are appended: the log file, or in tests a fake that runs out of room.
pub trait LogTarget: std::fmt::Debug + Send {
    /// One `write(2)`: how much of `buf` was appended.
    fn append(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Cuts the last `n` bytes off the end again.
    fn cut_tail(&mut self, n: u64) -> io::Result<()>;
}

impl LogTarget for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }

    fn cut_tail(&mut self, n: u64) -> io::Result<()> {
        // A stat on this error path only, never per record. The shim is the only writer of the
        // inode, so its end is the torn record: the kubelet's rotation renames the file (the
        // descriptor follows the inode) and never writes or truncates it, and a reader that saw
        // the torn bytes reads an unterminated last line again from its start.
        let len = self.metadata()?.len();
        let keep =
            len.checked_sub(n).ok_or_else(|| io::Error::other("the log is shorter than the torn record"))?;
        self.set_len(keep)
    }
}

/// A container's log file. Both streams of a container share one, so their records interleave.
/// Without a path, records are discarded (the output is still drained, and not counted as dropped).
#[derive(Debug)]
pub struct LogFile {
    path: Option<PathBuf>,
    target: Option<Box<dyn LogTarget>>,
    record: Vec<u8>,
    /// Dropped since the last record that reached the log, with the error that began the gap.
    gap: Option<(Dropped, String)>,
    /// The log ends in part of a record that could not be cut off: the next record starts with a
    /// newline so that it does not glue onto that part.
    torn: bool,
    /// Dropped over the container's life.
    dropped: Dropped,
}

impl LogFile {
    /// Opens (creating, mode 0640) the log for appending. The parent directory must exist: the
    /// kubelet creates it. The path must name a regular file, not a symlink (see [`open_append`]).
    pub fn open(path: Option<&Path>) -> Result<LogFile> {
        let target = match path {
            Some(path) => Some(Box::new(open_append(path)?) as Box<dyn LogTarget>),
            None => None,
        };
        Ok(LogFile::with_target(path, target))
    }

    /// A log appending to `target`; `path` is what [`LogFile::reopen`] opens.
    fn with_target(path: Option<&Path>, target: Option<Box<dyn LogTarget>>) -> LogFile {
        LogFile {
            path: path.map(Path::to_path_buf),
            target,
            record: Vec::new(),
            gap: None,
            torn: false,
            dropped: Dropped::default(),
        }
    }

    /// Opens the path again, after the kubelet renamed the old file away. On failure the old file
    /// stays in use. A pending gap's marker goes into the new file at once, if it has room.
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(path) = &self.path {
            self.target = Some(Box::new(open_append(path)?));
            self.torn = false;
            self.flush_gap(SystemTime::now());
        }
        Ok(())
    }

    /// What was dropped so far because the log could not be written.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Writes one record stamped with `at`; after a gap, the gap's marker first, in the same
    /// write: the gap ends only when both fit, so a disk with room for a marker but not for the
    /// output does not fill the log with markers. A record that cannot be written is dropped and
    /// counted.
    pub fn write_record(&mut self, at: SystemTime, stream: Stream, partial: bool, content: &[u8]) {
        if self.target.is_none() {
            return;
        }
        self.begin_write(at);
        push_record(&mut self.record, at, stream, partial, content);
        match self.append() {
            Ok(()) => self.end_gap(),
            Err(e) => {
                let path = &self.path;
                let (gap, _) = self.gap.get_or_insert_with(|| {
                    // Once per gap, not once per line.
                    tracing::warn!(?path, error = %e, "writing the container log failed, dropping output");
                    (Dropped::default(), e.to_string())
                });
                gap.add(content);
                self.dropped.add(content);
            }
        }
        // A record of a very long line must not pin its buffer for the container's lifetime.
        if self.record.capacity() > 64 * 1024 {
            self.record = Vec::new();
        }
    }

    /// Writes a pending gap's marker now (the output ended, or the log was reopened) rather than
    /// before a next record that may never come. If it still cannot be written, the gap stays.
    pub fn flush_gap(&mut self, at: SystemTime) {
        if self.gap.is_none() || self.target.is_none() {
            return;
        }
        self.begin_write(at);
        if self.append().is_ok() {
            self.end_gap();
        }
    }

    /// Starts the next write in `record`: a newline if the log ends in a torn record, then the
    /// pending gap's marker, if any.
    fn begin_write(&mut self, at: SystemTime) {
        self.record.clear();
        if self.torn {
            self.record.push(b'\n');
        }
        if let Some((gap, error)) = &self.gap {
            let marker = format!(
                "berth: {} log records ({} bytes) of this container were dropped: writing the log failed: {error}",
                gap.records, gap.bytes
            );
            push_record(&mut self.record, at, Stream::Stderr, false, marker.as_bytes());
        }
    }

    /// The write that carried a gap's marker succeeded.
    fn end_gap(&mut self) {
        if let Some((gap, _)) = self.gap.take() {
            tracing::info!(
                path = ?self.path,
                records = gap.records,
                bytes = gap.bytes,
                "writing the container log works again"
            );
        }
    }

    /// Appends `record` to the log. On failure no part of it stays: a short write (the disk
    /// filled in the middle) is cut off again, or failing that the next write starts on a new
    /// line.
    fn append(&mut self) -> io::Result<()> {
        let Some(target) = &mut self.target else { return Ok(()) };
        let mut written = 0;
        let result = loop {
            match target.append(&self.record[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) if written + n == self.record.len() => break Ok(()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => self.torn = false,
            Err(_) if written > 0 => {
                if let Err(e) = target.cut_tail(written as u64) {
                    tracing::warn!(path = ?self.path, error = %e, "cutting a torn record off the container log failed");
                    self.torn = true;
                }
            }
            Err(_) => {}
        }
        result
    }
}

/// Appends one record, `<timestamp> <stream> <P|F> <content>\n`, to `out`.
fn push_record(out: &mut Vec<u8>, at: SystemTime, stream: Stream, partial: bool, content: &[u8]) {
    format_timestamp(at, out);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
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
    use std::sync::{Arc, Mutex};
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

    /// A disk with room for `room` more bytes, then ENOSPC.
    #[derive(Debug, Clone, Default)]
    struct FakeDisk(Arc<Mutex<DiskState>>);

    #[derive(Debug, Default)]
    struct DiskState {
        data: Vec<u8>,
        room: usize,
        cut_fails: bool,
    }

    impl FakeDisk {
        fn with_room(room: usize) -> FakeDisk {
            let disk = FakeDisk::default();
            disk.set_room(room);
            disk
        }
        fn set_room(&self, room: usize) {
            self.0.lock().unwrap().room = room;
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().data.clone()).unwrap()
        }
        /// The log as (stream, tag, content) per line, timestamps dropped.
        fn lines(&self) -> Vec<String> {
            self.text().lines().map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string()).collect()
        }
        fn log(&self) -> LogFile {
            LogFile::with_target(None, Some(Box::new(self.clone())))
        }
    }

    impl LogTarget for FakeDisk {
        fn append(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut d = self.0.lock().unwrap();
            if d.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(d.room);
            d.room -= n;
            d.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn cut_tail(&mut self, n: u64) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            if d.cut_fails {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let keep = d.data.len() - n as usize;
            d.data.truncate(keep);
            d.room += n as usize;
            Ok(())
        }
    }

    const MARKER: &str = "stderr F berth: 3 log records (11 bytes) of this container were dropped: writing the log failed: No space left on device (os error 28)";

    /// Issue 14 item 5: a full log drops records (counted), and the first record that fits again
    /// is preceded by one marker record with the counts.
    #[test]
    fn a_full_log_drops_and_counts_then_marks_the_gap() {
        let disk = FakeDisk::with_room(1 << 20);
        let mut log = disk.log();
        log.record(Stream::Stdout, false, b"before");
        disk.set_room(0);
        log.record(Stream::Stdout, false, b"lost1");
        log.record(Stream::Stderr, true, b"lost");
        log.record(Stream::Stdout, false, b"xy");
        assert_eq!(log.dropped(), Dropped { records: 3, bytes: 11 });
        assert_eq!(disk.lines(), ["stdout F before"]);

        disk.set_room(1 << 20);
        log.record(Stream::Stdout, false, b"after");
        log.record(Stream::Stdout, false, b"more");
        assert_eq!(disk.lines(), ["stdout F before", MARKER, "stdout F after", "stdout F more"]);
        // The total stays; a later gap has a marker of its own counts.
        assert_eq!(log.dropped(), Dropped { records: 3, bytes: 11 });
        disk.set_room(0);
        log.record(Stream::Stdout, false, b"z");
        disk.set_room(1 << 20);
        log.record(Stream::Stdout, false, b"end");
        assert_eq!(log.dropped(), Dropped { records: 4, bytes: 12 });
        let lines = disk.lines();
        assert!(lines[4].starts_with("stderr F berth: 1 log records (1 bytes) "), "{lines:?}");
        assert_eq!(lines[5], "stdout F end");
    }

    /// A record that fits only in part is cut off again, so the log holds whole records only. In
    /// a gap, the marker and the record go in one write: room for either alone is not enough, so
    /// a nearly full disk does not fill the log with markers.
    #[test]
    fn torn_records_are_cut_off() {
        let disk = FakeDisk::with_room(1 << 20);
        let mut log = disk.log();
        log.record(Stream::Stdout, false, b"one");
        let whole = disk.text().len();
        disk.set_room(whole / 2);
        log.record(Stream::Stdout, false, b"two");
        assert_eq!(disk.lines(), ["stdout F one"]);
        assert!(disk.text().ends_with('\n'));
        assert_eq!(log.dropped(), Dropped { records: 1, bytes: 3 });
        // Room for the record alone.
        disk.set_room(whole + 2);
        log.record(Stream::Stdout, false, b"six");
        assert_eq!(disk.lines(), ["stdout F one"]);
        // Room for the marker alone.
        disk.set_room(300);
        log.record(Stream::Stdout, false, &[b'x'; 300]);
        assert_eq!(disk.lines(), ["stdout F one"]);
        assert_eq!(log.dropped(), Dropped { records: 3, bytes: 306 });
        disk.set_room(1 << 20);
        log.record(Stream::Stdout, false, b"ten");
        let lines = disk.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].starts_with("stderr F berth: 3 log records (306 bytes) "), "{lines:?}");
        assert_eq!(lines[2], "stdout F ten");
    }

    /// When a torn record cannot be cut off, the next record starts on a line of its own.
    #[test]
    fn a_torn_record_that_stays_is_ended_by_the_next() {
        let disk = FakeDisk::with_room(10);
        disk.0.lock().unwrap().cut_fails = true;
        let mut log = disk.log();
        log.record(Stream::Stdout, false, b"torn");
        disk.set_room(1 << 20);
        log.record(Stream::Stdout, false, b"whole");
        let text = disk.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(lines[0].len(), 10, "{text:?}");
        assert!(lines[1].contains(" stderr F berth: 1 log records (4 bytes) "), "{text:?}");
        assert!(lines[2].ends_with(" stdout F whole"), "{text:?}");
    }

    #[test]
    fn a_files_tail_is_cut_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut file = open_append(&path).unwrap();
        file.append(b"whole\ntorn").unwrap();
        file.cut_tail(4).unwrap();
        assert_eq!(read(&path), "whole\n");
        file.append(b"next\n").unwrap();
        assert_eq!(read(&path), "whole\nnext\n");
        assert!(file.cut_tail(100).is_err());
        assert_eq!(read(&path), "whole\nnext\n");
    }

    /// ReopenContainerLog after a gap: the marker goes into the new file at once; the rotated
    /// file is left as it was.
    #[test]
    fn reopen_writes_the_pending_marker_into_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let disk = FakeDisk::with_room(0);
        let mut log = LogFile::with_target(Some(&path), Some(Box::new(disk.clone())));
        log.record(Stream::Stdout, false, b"lost");
        log.reopen().unwrap();
        log.record(Stream::Stdout, false, b"new");
        let lines: Vec<String> =
            read(&path).lines().map(|l| l.split_once(' ').unwrap().1.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("stderr F berth: 1 log records (4 bytes) "), "{lines:?}");
        assert_eq!(lines[1], "stdout F new");
        assert_eq!(disk.text(), "");
        assert_eq!(log.dropped(), Dropped { records: 1, bytes: 4 });
    }

    /// At the end of the output a pending marker is written if there is room, and otherwise the
    /// gap stays for a later try.
    #[test]
    fn flush_gap_writes_the_marker_when_it_fits() {
        let disk = FakeDisk::with_room(0);
        let mut log = disk.log();
        log.record(Stream::Stdout, false, b"lost");
        log.flush_gap(SystemTime::now());
        assert_eq!(disk.text(), "");
        disk.set_room(1 << 20);
        log.flush_gap(SystemTime::now());
        log.flush_gap(SystemTime::now());
        let lines = disk.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("stderr F berth: 1 log records (4 bytes) "), "{lines:?}");
    }

    #[test]
    fn no_path_discards() {
        let mut log = LogFile::open(None).unwrap();
        log.record(Stream::Stdout, false, b"nowhere");
        log.reopen().unwrap();
    }
}
