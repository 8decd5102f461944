//! Small filesystems for the full-disk scenarios: a tmpfs of a given size in a temp dir of its own,
//! which a test makes berth's root or state (`berthd.config.root = fs.path()…` before the start),
//! fills to the last byte with a filler file, and empties again. Declare it before the [`Berthd`]
//! that uses it, so that it outlives berthd: dropping it (also when the test panics) removes the
//! filler, unmounts everything under it and deletes its directory. This module must never mount or
//! fill anything outside its own temp dir.
//!
//! [`Berthd`]: super::Berthd

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Berthd, Cri, Leaks, Registry, images};

/// Which of berth's directories a [`SmallFs`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Root,
    State,
}

/// A berthd as the full-disk scenarios start it: a pod network of its own, trusting `reg`, its root
/// or state on `fs`, started, and the busybox test image pulled. Returns it with the leak inventory
/// taken at the start, a CRI client and the image's id.
pub async fn berthd_on(fs: &SmallFs, on: On, reg: &Registry) -> (Berthd, Leaks, Cri, String) {
    let mut berthd = Berthd::with_network();
    berthd.trust(reg);
    match on {
        On::Root => berthd.config.root = fs.path().to_path_buf(),
        On::State => berthd.config.state = fs.path().to_path_buf(),
    }
    berthd.start();
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    (berthd, before, cri, image)
}

/// A tmpfs of a fixed size, mounted until dropped.
pub struct SmallFs {
    dir: PathBuf,
    mount: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `mib` MiB (mode 0711, as berthd makes its directories) in a new temp dir.
    pub fn mount(name: &str, mib: u64) -> SmallFs {
        use nix::mount::{MsFlags, mount};
        let dir = super::temp_dir(&format!("berth-e2e-{name}-"));
        let mount_point = dir.join(name);
        std::fs::create_dir(&mount_point)
            .unwrap_or_else(|e| panic!("creating {}: {e}", mount_point.display()));
        let options = format!("size={mib}m,mode=0711");
        mount(Some("tmpfs"), &mount_point, Some("tmpfs"), MsFlags::empty(), Some(options.as_str()))
            .unwrap_or_else(|e| panic!("mounting a {mib} MiB tmpfs on {}: {e}", mount_point.display()));
        SmallFs { dir, mount: mount_point }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    fn filler(&self) -> PathBuf {
        self.mount.join(".e2e-filler")
    }

    /// Bytes still free (statvfs, as `df` shows them).
    pub fn available(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.mount.display()));
        st.f_bavail * st.f_frsize
    }

    /// Bytes in use (statvfs).
    pub fn used(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.mount.display()));
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.mount)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.mount.display()));
        st.f_blocks * st.f_frsize
    }

    /// Appends to the filler file until the filesystem refuses a single page more (ENOSPC); returns
    /// how many bytes it wrote. Calling it again fills up whatever was freed since.
    pub fn fill(&self) -> u64 {
        let path = self.filler();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let mut written = 0u64;
        for chunk in [1 << 20, 4096] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        assert_eq!(self.available(), 0, "{} is not full after writing {written} bytes", self.mount.display());
        written
    }

    /// Removes the filler file.
    pub fn unfill(&self) {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", self.filler().display()),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.filler());
        let unmounted = super::fs::unmount_all_under(&self.dir);
        if unmounted.is_empty() {
            eprintln!("berth-e2e: {} was not mounted any more", self.mount.display());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("berth-e2e: removing {}: {e}", self.dir.display());
        }
    }
}
