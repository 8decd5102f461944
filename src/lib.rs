//! Berth: a container runtime for Kubernetes nodes. A CRI v1 server (`cri`) on top of a
//! containerd-like engine (`engine`), pod networking (`network`) and a per-pod shim. The binaries in
//! `src/bin` only parse arguments and call into this library.

pub mod admin;
pub mod bench;
pub mod config;
pub mod cri;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod install;
pub mod mem;
pub mod metrics;
pub mod mountinfo;
pub mod network;
pub mod server;
pub mod shim;
pub mod stats;
pub mod streaming;
pub mod task;

pub use error::{Error, ErrorKind, Result};
