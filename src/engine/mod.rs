//! The containerd-like core: content store, metadata database, images, snapshots, leases and garbage
//! collection. It knows nothing of CRI or gRPC; `cri/` translates CRI calls into calls on it.

pub mod digest;
pub mod image;
pub mod metadata;
pub mod oci;
pub mod snapshot;

/// Disk used by a store: allocated bytes (st_blocks × 512) and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage { bytes: self.bytes + o.bytes, inodes: self.inodes + o.inodes }
    }
}
