//! End-to-end tests: real berthd, runc, CNI plugins and registry.
