//! Pod networking: network namespaces and CNI plugins. Knows nothing of CRI: `cri/` passes in what a
//! pod asks for and gets back IPs.

pub mod conf;
