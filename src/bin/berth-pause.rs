//! berth-pause: the process that holds a pod's namespaces. It sleeps, reaps the zombies it inherits
//! as the pod's init (shared PID namespace), and exits 0 on SIGTERM or SIGINT. It must stay tiny and
//! self-contained: build.rs compiles this file on its own, statically linked (no crates, only std and
//! libc), and berthd embeds the result as its built-in pause image.
#![allow(unsafe_code)]

use std::ffi::c_int;

/// glibc's sigset_t: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

unsafe extern "C" {
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwait(set: *const SigSet, sig: *mut c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
}

const SIG_BLOCK: c_int = 0;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("berth-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut set = SigSet([0; 16]);
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t-sized buffer for the duration of each
    // call; the signal numbers are valid; sigprocmask only reads `set` (old mask pointer is null).
    unsafe {
        sigemptyset(&mut set);
        for sig in [SIGINT, SIGTERM, SIGCHLD] {
            sigaddset(&mut set, sig);
        }
        // Blocked signals stay pending for sigwait; as PID 1 of a PID namespace, an unhandled
        // SIGTERM would otherwise be ignored by the kernel.
        sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut());
    }
    loop {
        let mut sig: c_int = 0;
        // SAFETY: `set` was initialised above; `sig` is a valid out pointer.
        if unsafe { sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            SIGCHLD => loop {
                let mut status: c_int = 0;
                // SAFETY: `status` is a valid out pointer; -1 waits for any child without blocking.
                if unsafe { waitpid(-1, &mut status, WNOHANG) } <= 0 {
                    break;
                }
            },
            _ => std::process::exit(0),
        }
    }
}
