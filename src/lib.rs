//! Berth: a container runtime for Kubernetes nodes. A CRI v1 server (`cri`) on top of a
//! containerd-like engine (`engine`) and a per-pod shim. The binaries in `src/bin` only parse
//! arguments and call into this library.

pub mod config;
pub mod engine;
pub mod error;

pub use error::{Error, ErrorKind, Result};
