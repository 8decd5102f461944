//! Resource usage of containers and pods for the kubelet's stats calls: cgroup readers for both
//! layouts (`cgroup`), a pod's network counters (`net`), and the [`Sampler`] that keeps what must
//! outlive one call — the cgroup layout (detected once), the last CPU sample per object (usage
//! rates need two samples) and recent writable-layer sizes (walking an upper dir on every 10 s poll
//! is wasteful). Knows nothing of CRI; never writes to a cgroup or a container's files.

pub mod cgroup;
pub mod net;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use cgroup::{CgroupStats, CpuStats, Layout, MemoryStats};
pub use net::InterfaceStats;

use crate::engine::Usage;
use crate::error::Result;

/// How long a measured writable-layer size is reused (the kubelet polls every 10 s).
pub const FS_USAGE_TTL: Duration = Duration::from_secs(10);
/// Objects whose samples are kept at most; past it the oldest sample is dropped.
pub const MAX_SAMPLES: usize = 8192;

/// One CPU reading: cumulative usage and when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    usage_ns: u64,
    at_ns: i64,
}

/// What stats calls remember between calls. Entries are keyed by container or sandbox id and
/// dropped by [`Sampler::retain`] once their object is gone.
#[derive(Default)]
pub struct Sampler {
    layout: OnceLock<Option<Layout>>,
    cpu: Mutex<HashMap<String, CpuSample>>,
    fs: Mutex<HashMap<String, (Instant, Usage)>>,
}

impl Sampler {
    /// A sampler for a known layout (tests use fake trees); [`Sampler::default`] detects it.
    pub fn with_layout(layout: Option<Layout>) -> Sampler {
        let s = Sampler::default();
        let _ = s.layout.set(layout);
        s
    }

    /// This machine's cgroup layout, detected on first use.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.get_or_init(Layout::detect).as_ref()
    }

    /// The counters of cgroup `path` (inside the hierarchy, see [`cgroup::cgroup_path`]); None if
    /// it does not exist.
    pub fn read_cgroup(&self, path: &str) -> Option<CgroupStats> {
        self.layout()?.read(path)
    }

    /// The CPU usage rate of `id` in nanocores since its previous sample, recording this one.
    /// None on the first sample, when time did not advance, or when the counter went backwards
    /// (a restarted container) — as containerd and cAdvisor leave it unset then.
    pub fn cpu_rate(&self, id: &str, usage_ns: u64, at_ns: i64) -> Option<u64> {
        let mut cpu = self.cpu.lock().unwrap();
        let prev = cpu.get(id).copied();
        if prev.is_none() && cpu.len() >= MAX_SAMPLES {
            // Bounded: forget the stalest object rather than grow without end.
            if let Some(oldest) = cpu.iter().min_by_key(|(_, s)| s.at_ns).map(|(k, _)| k.clone()) {
                cpu.remove(&oldest);
            }
        }
        let prev = match prev {
            Some(p) if at_ns <= p.at_ns => return None,
            p => p,
        };
        cpu.insert(id.to_string(), CpuSample { usage_ns, at_ns });
        let prev = prev?;
        let delta = usage_ns.checked_sub(prev.usage_ns)?;
        let elapsed = (at_ns - prev.at_ns) as u128;
        Some((delta as u128 * 1_000_000_000 / elapsed) as u64)
    }

    /// The writable-layer usage of `id`, measured by `measure` at most once per [`FS_USAGE_TTL`].
    pub fn fs_usage(&self, id: &str, measure: impl FnOnce() -> Result<Usage>) -> Result<Usage> {
        self.fs_usage_at(id, Instant::now(), measure)
    }

    fn fs_usage_at(&self, id: &str, now: Instant, measure: impl FnOnce() -> Result<Usage>) -> Result<Usage> {
        if let Some((at, u)) = self.fs.lock().unwrap().get(id)
            && now.saturating_duration_since(*at) < FS_USAGE_TTL
        {
            return Ok(*u);
        }
        // Measured without the lock: a big walk must not hold up other containers.
        let u = measure()?;
        let mut fs = self.fs.lock().unwrap();
        if fs.len() >= MAX_SAMPLES {
            fs.clear();
        }
        fs.insert(id.to_string(), (now, u));
        Ok(u)
    }

    /// Drops the samples of objects for which `live` is false.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.cpu.lock().unwrap().retain(|k, _| live(k));
        self.fs.lock().unwrap().retain(|k, _| live(k));
    }

    /// How many objects have samples (for tests and debugging).
    pub fn len(&self) -> usize {
        self.cpu.lock().unwrap().len().max(self.fs.lock().unwrap().len())
    }

    /// Whether no samples are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn cpu_rate_needs_two_samples() {
        let s = Sampler::with_layout(None);
        assert_eq!(s.cpu_rate("c", 1_000, 10 * SEC), None, "first sample has no rate");
        // Half a core for 2 s.
        assert_eq!(s.cpu_rate("c", 1_000 + SEC as u64, 12 * SEC), Some(500_000_000));
        // Same timestamp again: no interval, previous sample kept.
        assert_eq!(s.cpu_rate("c", 9 * SEC as u64, 12 * SEC), None);
        // Two full cores for 1 s.
        assert_eq!(s.cpu_rate("c", 1_000 + 3 * SEC as u64, 13 * SEC), Some(2_000_000_000));
        // Counter went backwards (restart): no rate, and the new baseline is used next.
        assert_eq!(s.cpu_rate("c", 100, 14 * SEC), None);
        assert_eq!(s.cpu_rate("c", 100 + SEC as u64 / 4, 15 * SEC), Some(250_000_000));
        // Another object has its own baseline.
        assert_eq!(s.cpu_rate("d", 5, 15 * SEC), None);
    }

    #[test]
    fn samples_are_bounded_and_dropped_with_their_objects() {
        let s = Sampler::with_layout(None);
        for i in 0..MAX_SAMPLES + 5 {
            s.cpu_rate(&format!("c{i}"), 1, i as i64 + 1);
        }
        assert_eq!(s.cpu.lock().unwrap().len(), MAX_SAMPLES);
        assert!(!s.cpu.lock().unwrap().contains_key("c0"), "the stalest sample goes first");
        s.retain(|id| id == "c9");
        assert_eq!(s.len(), 1);
        s.retain(|_| false);
        assert!(s.is_empty());
    }

    #[test]
    fn fs_usage_is_reused_within_ttl() {
        let s = Sampler::with_layout(None);
        let t0 = Instant::now();
        let calls = std::cell::Cell::new(0);
        let measure = |b| {
            calls.set(calls.get() + 1);
            Ok(Usage { bytes: b, inodes: 1 })
        };
        assert_eq!(s.fs_usage_at("c", t0, || measure(10)).unwrap().bytes, 10);
        assert_eq!(s.fs_usage_at("c", t0 + Duration::from_secs(5), || measure(20)).unwrap().bytes, 10);
        assert_eq!(s.fs_usage_at("c", t0 + FS_USAGE_TTL, || measure(30)).unwrap().bytes, 30);
        assert_eq!(calls.get(), 2);
        // A failed measurement is not cached.
        let err = s.fs_usage_at("e", t0, || Err(crate::Error::not_found("gone")));
        assert!(err.is_err());
        assert_eq!(s.fs_usage_at("e", t0, || measure(1)).unwrap().bytes, 1);
    }

    #[test]
    fn reads_cgroups_through_the_layout() {
        let d = tempfile::tempdir().unwrap();
        cgroup::tests::write_tree(
            d.path(),
            &[
                ("a.slice/berth-x.scope/cpu.stat", "usage_usec 7\n"),
                ("a.slice/berth-x.scope/memory.current", "5\n"),
            ],
        );
        let s = Sampler::with_layout(Some(Layout::V2(d.path().to_path_buf())));
        let st = s.read_cgroup(&cgroup::cgroup_path("a.slice:berth:x")).unwrap();
        assert_eq!(st.cpu.unwrap().usage_ns, 7000);
        assert_eq!(st.memory.unwrap().usage, 5);
        assert_eq!(s.read_cgroup("/a.slice/berth-y.scope"), None);
        assert_eq!(Sampler::with_layout(None).read_cgroup("/x"), None);
    }

    #[test]
    fn detects_this_machine_and_reads_our_own_cgroup() {
        // Read-only check of the readers against the real kernel: this test's own cgroup.
        let Some(layout) = Sampler::default().layout().cloned() else {
            assert!(!std::path::Path::new("/sys/fs/cgroup/memory").exists(), "layout not detected");
            return;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path_of = |ctrl: &str| {
            own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                let hit =
                    if ctrl.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == ctrl) };
                hit.then(|| path.to_string())
            })
        };
        match &layout {
            Layout::V1(_) => {
                let path = path_of("memory").unwrap();
                let s = layout.read(&path).expect("our memory cgroup exists");
                assert!(s.memory.unwrap().usage > 0, "we use memory");
                // A hybrid host also has the unified hierarchy: the v2 reader works there too.
                let unified = std::path::Path::new("/sys/fs/cgroup/unified");
                if unified.join("cgroup.controllers").exists() {
                    let s = Layout::V2(unified.into()).read(&path_of("").unwrap()).unwrap();
                    assert!(s.cpu.unwrap().usage_ns > 0, "v2 cpu.stat on the hybrid host");
                }
            }
            Layout::V2(_) => {
                let path = path_of("").unwrap();
                let s = layout.read(&path).expect("our cgroup exists");
                assert!(s.cpu.unwrap().usage_ns > 0, "we use CPU");
            }
        }
    }
}
