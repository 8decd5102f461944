//! Berth's RuntimeDefault seccomp profile, equivalent to containerd's
//! (`contrib/seccomp/seccomp_default.go`): an allowlist with `SCMP_ACT_ERRNO` as the default
//! action, the capability-conditional syscalls added only when the process's bounding set holds
//! the capability, and `clone` restricted to no new namespaces without CAP_SYS_ADMIN. This file is
//! data plus the few rules that select from it; it must never read the host (the caller passes
//! the capabilities, the architecture and the kernel version).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompArgBuilder, LinuxSeccompOperator as Op,
    LinuxSyscall,
};

/// Syscalls every container may make (containerd's list, in its order).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
    "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr",
    "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid",
    "getuid32", "getxattr", "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32",
    "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr", "listxattrat", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lsm_get_self_attr", "lsm_list_modules",
    "lsm_set_self_attr", "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "map_shadow_stack",
    "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "mseal",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll",
    "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat",
    "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "setxattrat",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statmount",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit",
    "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// Syscalls allowed when the bounding set holds a capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `personality(2)` domains allowed: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26 and the
/// query value 0xffffffff.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;
/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
/// CLONE_NEWCGROUP: `clone` may not create namespaces without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The seccomp architectures a profile covers on the machine architecture `arch` (Rust's
/// `std::env::consts::ARCH` names).
pub fn architectures(arch: &str) -> Vec<Arch> {
    match arch {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64],
        "mips64" => vec![Arch::ScmpArchMips, Arch::ScmpArchMips64, Arch::ScmpArchMips64n32],
        "s390x" => vec![Arch::ScmpArchS390, Arch::ScmpArchS390x],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "loongarch64" => vec![Arch::ScmpArchLoongarch64],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        _ => vec![],
    }
}

fn allow(names: &[&str]) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect()).set_action(Action::ScmpActAllow);
    s
}

fn allow_if(name: &str, index: usize, value: u64, op: Op) -> LinuxSyscall {
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(0u64)
        .op(op)
        .build()
        .expect("every field of a seccomp argument is set");
    let mut s = allow(&[name]);
    s.set_args(Some(vec![arg]));
    s
}

/// The RuntimeDefault profile for a process whose bounding set is `bounding`, on machine
/// architecture `arch`, under kernel `kernel` (major, minor).
pub fn default_profile(bounding: &[String], arch: &str, kernel: (u32, u32)) -> LinuxSeccomp {
    let mut syscalls = vec![allow(ALLOWED)];
    // socket(2) for every address family but AF_ALG and AF_VSOCK, as three single-condition
    // rules (containerd explains why one rule with two conditions would not work).
    syscalls.push(allow_if("socket", 0, AF_ALG, Op::ScmpCmpLt));
    syscalls.push(allow_if("socket", 0, AF_ALG + 1, Op::ScmpCmpEq));
    syscalls.push(allow_if("socket", 0, AF_VSOCK, Op::ScmpCmpGt));
    for p in PERSONALITIES {
        syscalls.push(allow_if("personality", 0, p, Op::ScmpCmpEq));
    }
    if kernel >= (4, 8) {
        syscalls.push(allow(&["process_vm_readv", "process_vm_writev", "ptrace"]));
    }
    match arch {
        "powerpc64" => syscalls.push(allow(&["sync_file_range2", "swapcontext"])),
        "arm" | "aarch64" => syscalls.push(allow(&[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ])),
        "x86_64" => syscalls.push(allow(&["arch_prctl", "modify_ldt"])),
        "x86" => syscalls.push(allow(&["modify_ldt"])),
        "s390x" => syscalls.push(allow(&["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"])),
        "riscv64" => syscalls.push(allow(&["riscv_flush_icache", "riscv_hwprobe"])),
        _ => {}
    }
    // In the order of the bounding set, like containerd's loop over it.
    for cap in bounding {
        if let Some((_, names)) = BY_CAPABILITY.iter().find(|(c, _)| c == cap) {
            syscalls.push(allow(names));
        }
    }
    if !bounding.iter().any(|c| c == "CAP_SYS_ADMIN") {
        // On s390 the flags are clone's second argument.
        let index = if arch == "s390x" { 1 } else { 0 };
        syscalls.push(allow_if("clone", index, CLONE_NAMESPACE_FLAGS, Op::ScmpCmpMaskedEq));
        // ENOSYS rather than EPERM makes glibc fall back to clone(2).
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".into()]).set_action(Action::ScmpActErrno).set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(Action::ScmpActErrno)
        .set_architectures(Some(architectures(arch)))
        .set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::spec::caps::DEFAULT_CAPS;

    fn defaults() -> Vec<String> {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    }

    fn allowed_unconditionally(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().as_ref().unwrap().iter().any(|s| {
            s.action() == Action::ScmpActAllow
                && s.args().as_ref().is_none_or(|a| a.is_empty())
                && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn default_profile_is_an_errno_allowlist_for_this_architecture() {
        let p = default_profile(&defaults(), "x86_64", (6, 1));
        assert_eq!(p.default_action(), Action::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), None);
        assert_eq!(
            p.architectures().as_ref().unwrap(),
            &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        assert_eq!(ALLOWED.len(), 363);
        for name in ["read", "execve", "openat2", "arch_prctl", "ptrace", "chroot"] {
            assert!(allowed_unconditionally(&p, name), "{name}");
        }
        for name in
            ["mount", "unshare", "setns", "reboot", "bpf", "keyctl", "add_key", "init_module", "socket"]
        {
            assert!(!allowed_unconditionally(&p, name), "{name}");
        }
        assert_eq!(architectures("aarch64"), vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]);
    }

    #[test]
    fn capability_conditional_syscalls_follow_the_bounding_set() {
        let p = default_profile(&defaults(), "x86_64", (6, 1));
        let mut caps = defaults();
        caps.push("CAP_SYS_ADMIN".into());
        caps.push("CAP_SYS_TIME".into());
        let admin = default_profile(&caps, "x86_64", (6, 1));
        for name in ["mount", "unshare", "setns", "clone3", "settimeofday"] {
            assert!(!allowed_unconditionally(&p, name), "{name}");
            assert!(allowed_unconditionally(&admin, name), "{name}");
        }
        // Without CAP_SYS_CHROOT no chroot.
        let none = default_profile(&[], "x86_64", (6, 1));
        assert!(!allowed_unconditionally(&none, "chroot"));
    }

    #[test]
    fn clone_without_sys_admin_may_not_create_namespaces_and_clone3_gets_enosys() {
        let p = default_profile(&defaults(), "x86_64", (6, 1));
        let rules = p.syscalls().as_ref().unwrap();
        let clone = rules.iter().find(|s| s.names() == &vec!["clone".to_string()]).unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!((arg.index(), arg.value(), arg.op()), (0, 0x7E020000, Op::ScmpCmpMaskedEq));
        assert_eq!(arg.value_two(), Some(0));
        let clone3 = rules.iter().find(|s| s.names() == &vec!["clone3".to_string()]).unwrap();
        assert_eq!((clone3.action(), clone3.errno_ret()), (Action::ScmpActErrno, Some(38)));
        // With CAP_SYS_ADMIN neither restriction is there.
        let admin = default_profile(&["CAP_SYS_ADMIN".to_string()], "x86_64", (6, 1));
        assert!(!admin.syscalls().as_ref().unwrap().iter().any(|s| s.action() == Action::ScmpActErrno));
    }

    #[test]
    fn socket_rules_exclude_af_alg_and_af_vsock() {
        let p = default_profile(&defaults(), "x86_64", (6, 1));
        let socket: Vec<_> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names() == &vec!["socket".to_string()])
            .map(|s| s.args().as_ref().unwrap()[0])
            .collect();
        let allows = |af: u64| {
            socket.iter().any(|a| match a.op() {
                Op::ScmpCmpLt => af < a.value(),
                Op::ScmpCmpEq => af == a.value(),
                Op::ScmpCmpGt => af > a.value(),
                _ => unreachable!(),
            })
        };
        for af in [1, 2, 10, 16, 17, 39, 44] {
            assert!(allows(af), "{af}");
        }
        assert!(!allows(AF_ALG) && !allows(AF_VSOCK));
    }

    #[test]
    fn old_kernels_do_not_get_ptrace_without_the_capability() {
        let p = default_profile(&defaults(), "x86_64", (4, 4));
        assert!(!allowed_unconditionally(&p, "ptrace"));
    }
}
