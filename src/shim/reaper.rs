//! The shim's one and only place that reaps children. The shim is the child subreaper of every
//! process of its pod, so `waitpid(-1)` returns runtime invocations, container inits, exec'd
//! processes and orphaned grandchildren alike; each exit is dispatched by pid to whoever watches it.
//!
//! A process can exit before its pid is known: `runc exec -d` returns after the exec'd process has
//! started, and `echo` may be gone by then. While such a start is in flight, exits of unwatched
//! pids are kept as "unclaimed" and handed over when the pid is watched (containerd's approach);
//! with no start in flight, they are orphans and dropped. Nothing else in the shim may call
//! `wait`/`waitpid`, and nothing here may block.

use std::collections::HashMap;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::sync::oneshot;

/// Unclaimed exits kept at most: a bound for a pod whose orphans die in bulk during a start.
const MAX_UNCLAIMED: usize = 4096;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit status, or 128 + the signal number for a process killed by a signal.
    pub code: i32,
    pub at: SystemTime,
}

impl Exit {
    /// Converts a `waitpid` status; `None` for statuses that are not a termination.
    pub fn from_wait_status(status: WaitStatus, at: SystemTime) -> Option<Exit> {
        match status {
            WaitStatus::Exited(pid, code) => Some(Exit { pid: pid.as_raw(), code, at }),
            WaitStatus::Signaled(pid, signal, _) => {
                Some(Exit { pid: pid.as_raw(), code: 128 + signal as i32, at })
            }
            _ => None,
        }
    }
}

/// Who is told about an exit.
#[derive(Debug)]
pub enum Target {
    /// A runtime invocation or an exec'd process: the waiting call gets the exit.
    Notify(oneshot::Sender<Exit>),
    /// A container's init process.
    Container(String),
}

/// The bookkeeping of watched pids and unclaimed exits. Pure: `reap` does the system calls.
#[derive(Debug, Default)]
pub struct Reaper {
    watched: HashMap<i32, Target>,
    unclaimed: HashMap<i32, Exit>,
    starts_in_flight: usize,
}

impl Reaper {
    /// A start (a process whose pid will only be known later) begins: keep unwatched exits.
    pub fn begin_start(&mut self) {
        self.starts_in_flight += 1;
    }

    /// A start ended (its pid is watched or it failed). With none left, unclaimed exits are
    /// orphans and dropped.
    pub fn end_start(&mut self) {
        self.starts_in_flight = self.starts_in_flight.saturating_sub(1);
        if self.starts_in_flight == 0 {
            self.unclaimed = HashMap::new();
        }
    }

    /// Watches `pid`. If it already exited, returns the target with its exit for the caller to
    /// dispatch; the pid is then not watched.
    pub fn watch(&mut self, pid: i32, target: Target) -> Option<(Target, Exit)> {
        match self.unclaimed.remove(&pid) {
            Some(exit) => Some((target, exit)),
            None => {
                self.watched.insert(pid, target);
                None
            }
        }
    }

    /// Watches a pid the shim has just spawned itself. An unclaimed exit recorded for the same pid
    /// can only be from an earlier process that had it, and is dropped.
    pub fn watch_spawned(&mut self, pid: i32, target: Target) {
        self.unclaimed.remove(&pid);
        self.watched.insert(pid, target);
    }

    /// Stops watching `pid` (its watcher went away); returns the target if it was watched.
    pub fn unwatch(&mut self, pid: i32) -> Option<Target> {
        self.watched.remove(&pid)
    }

    /// Records an exit; returns the target to dispatch it to, if the pid is watched.
    pub fn exited(&mut self, exit: Exit) -> Option<Target> {
        if let Some(target) = self.watched.remove(&exit.pid) {
            return Some(target);
        }
        if self.starts_in_flight > 0 && self.unclaimed.len() < MAX_UNCLAIMED {
            self.unclaimed.insert(exit.pid, exit);
        }
        None
    }
}

/// Reaps every child that has exited, without blocking, returning their exits in order.
pub fn reap() -> Vec<Exit> {
    let mut exits = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => exits.extend(Exit::from_wait_status(status, SystemTime::now())),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                break;
            }
        }
    }
    exits
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    fn exit(pid: i32, code: i32) -> Exit {
        Exit { pid, code, at: SystemTime::UNIX_EPOCH }
    }

    fn container(target: Option<Target>) -> Option<String> {
        match target {
            Some(Target::Container(id)) => Some(id),
            _ => None,
        }
    }

    #[test]
    fn watched_exit_goes_to_its_target() {
        let mut r = Reaper::default();
        assert!(r.watch(10, Target::Container("c1".into())).is_none());
        assert_eq!(container(r.exited(exit(10, 3))).as_deref(), Some("c1"));
        assert!(r.exited(exit(10, 3)).is_none(), "dispatched once");
    }

    #[test]
    fn exit_before_watch_is_claimed_while_a_start_is_in_flight() {
        let mut r = Reaper::default();
        r.begin_start();
        assert!(r.exited(exit(42, 0)).is_none());
        let (tx, mut rx) = oneshot::channel();
        let (target, e) = r.watch(42, Target::Notify(tx)).expect("already exited");
        assert_eq!(e, exit(42, 0));
        let Target::Notify(tx) = target else { panic!("target changed") };
        tx.send(e).unwrap();
        assert_eq!(rx.try_recv().unwrap().code, 0);
        assert!(r.watched.is_empty(), "a claimed pid is not watched");
        r.end_start();
    }

    #[test]
    fn orphan_exits_are_dropped_without_a_start_in_flight() {
        let mut r = Reaper::default();
        assert!(r.exited(exit(7, 1)).is_none());
        assert!(r.watch(7, Target::Container("c".into())).is_none(), "no stale exit for a reused pid");
    }

    #[test]
    fn unclaimed_exits_are_forgotten_when_the_last_start_ends() {
        let mut r = Reaper::default();
        r.begin_start();
        r.begin_start();
        r.exited(exit(5, 1));
        r.end_start();
        assert_eq!(r.unclaimed.len(), 1, "one start still in flight");
        r.end_start();
        assert!(r.unclaimed.is_empty());
        r.end_start(); // unbalanced end is harmless
        assert_eq!(r.starts_in_flight, 0);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let mut r = Reaper::default();
        r.begin_start();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.exited(exit(pid, 0));
        }
        assert_eq!(r.unclaimed.len(), MAX_UNCLAIMED);
    }

    #[test]
    fn a_freshly_spawned_pid_ignores_a_stale_unclaimed_exit() {
        let mut r = Reaper::default();
        r.begin_start();
        r.exited(exit(11, 9));
        r.watch_spawned(11, Target::Container("new".into()));
        assert_eq!(container(r.exited(exit(11, 0))).as_deref(), Some("new"));
        assert!(r.unclaimed.is_empty());
    }

    #[test]
    fn unwatch_removes_the_target() {
        let mut r = Reaper::default();
        r.watch(9, Target::Container("c".into()));
        assert!(r.unwatch(9).is_some());
        assert!(r.exited(exit(9, 0)).is_none());
    }

    #[test]
    fn signals_become_128_plus_signal() {
        let pid = Pid::from_raw(3);
        let at = SystemTime::UNIX_EPOCH;
        let e = Exit::from_wait_status(WaitStatus::Signaled(pid, Signal::SIGTERM, false), at).unwrap();
        assert_eq!(e.code, 143);
        assert_eq!(Exit::from_wait_status(WaitStatus::Exited(pid, 3), at).unwrap().code, 3);
        assert!(Exit::from_wait_status(WaitStatus::Stopped(pid, Signal::SIGSTOP), at).is_none());
    }
}
