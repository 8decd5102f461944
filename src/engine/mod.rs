//! The containerd-like core: content store, metadata database, images, snapshots, leases and garbage
//! collection. It knows nothing of CRI or gRPC; `cri/` translates CRI calls into calls on it.

pub mod digest;
pub mod metadata;
pub mod oci;
