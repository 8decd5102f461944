//! End-to-end tests: a real berthd binary, real registries (Debian's docker-registry) and test images
//! the suite builds itself from busybox-static. One scenario per file; the harness is in `harness/`.
//! They need root and the tools `./test.sh` installs; each test starts its own berthd, and registries
//! are shared per process only where tests just read from them. Pod scenarios (`pod_*`, `container_*`,
//! `kubelet_habits`) run real pods with Debian's runc and CNI plugins on a bridge and /24 subnet of
//! their own (`harness::net`), send kubelet-shaped configs (`harness::pod`), and compare a leak
//! inventory (`harness::leaks`) before and after.
//!
//! Run: `cargo test --test e2e` as root (`-- harness` for the harness's own tests only).
//! `BERTH_E2E_LARGE_MIB` sets the size of `e2e/large:1` (default 300). Test images are cached in
//! `<tmp>/berth-e2e-images/<key>/` (an OCI layout plus `catalog.json`); the berthd log of a failed
//! test is printed and kept in `<tmp>/berth-e2e-failed/`.

mod harness;

mod berthctl;
mod critest;

mod container_apparmor;
mod container_console_socket;
mod container_events;
mod container_exec_sync;
mod container_exit_reasons;
mod container_forged_sandbox_config;
mod container_image_volume;
mod container_log_full;
mod container_log_paths;
mod container_logs;
mod container_pid_target;
mod container_pressure;
mod container_readonly_rootfs;
mod container_stats;
mod container_stop_forced;
mod container_stop_signal;
mod container_stop_timeout;
mod container_user_caps;
mod disk_full_metadata;
mod disk_full_pull;
mod disk_full_restart;
mod disk_full_state;
mod disk_full_usage;
mod host_private_state;
mod kubelet_habits;
mod kubelet_pod_life;
mod list_streaming;
mod metrics_endpoint;
mod pod_chaos;
mod pod_churn;
mod pod_failures;
mod pod_host_network;
mod pod_host_port;
mod pod_multi_container;
mod pod_restart_recovery;
mod pod_shim_death;
mod streaming;

mod image_auth;
mod image_concurrent_pull;
mod image_corrupt_blob;
mod image_fs_info;
mod image_hostile;
mod image_mirror;
mod image_multiarch;
mod image_pull;
mod image_pull_sigkill;
mod image_remove;
mod image_remove_space;
mod image_restart;
mod image_tls;
mod image_user;
mod image_zstd;
