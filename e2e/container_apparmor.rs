//! Issue 8 item 5, the path this machine can take: AppArmor profiles on a host without AppArmor.
//! A container that asks for no profile, for RuntimeDefault or for Unconfined runs (unconfined:
//! there is nothing to confine with); one that names a Localhost profile is refused with
//! FAILED_PRECONDITION, as containerd refuses it. On a host with AppArmor the same requests run under
//! berth-default (checked from inside) and the unknown Localhost profile is refused as not loaded.

use berth::cri::api::{ContainerState, SecurityProfile, security_profile::ProfileType};
use tonic::Code;

use crate::harness::leaks::assert_back_to;
use crate::harness::{Berthd, Leaks, Registry, images};

/// What berthd finds: the AppArmor LSM on, its filesystem mounted, the parser installed.
fn host_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.starts_with('Y'))
        && std::path::Path::new("/sys/kernel/security/apparmor").exists()
        && ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
            .iter()
            .any(|p| std::path::Path::new(p).is_file())
        && std::env::var_os("container").is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn apparmor_profiles_where_the_host_may_have_no_apparmor() {
    let reg = Registry::shared();
    let berthd = Berthd::started_with_network(&[reg]);
    let before = Leaks::of(&berthd);
    let mut cri = berthd.cri().await;
    let image = cri.pull(&images().busybox.reference(&reg.host())).await.expect("PullImage busybox");
    let pod = berthd.pod("apparmor");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let enabled = host_has_apparmor();

    let profile =
        |t: ProfileType, name: &str| SecurityProfile { profile_type: t as i32, localhost_ref: name.into() };
    for (name, asked, confined) in [
        ("unset", None, enabled),
        ("default", Some(profile(ProfileType::RuntimeDefault, "")), enabled),
        ("unconfined", Some(profile(ProfileType::Unconfined, "")), false),
    ] {
        let mut config = pod.container(name, &image).command(&["sleep", "100000"]).build();
        config.linux.as_mut().unwrap().security_context.as_mut().unwrap().apparmor = asked;
        let id = cri.create_start(&pod_id, &pod, config).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let s = cri.container_status(&id).await.expect("ContainerStatus");
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{name}: {s:?}");
        if enabled {
            let current = cri.sh(&id, "cat /proc/self/attr/current").await;
            assert_eq!(current.starts_with("berth-default"), confined, "{name}: {current}");
        }
    }

    let mut config = pod.container("local", &image).command(&["sleep", "100000"]).build();
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().apparmor =
        Some(profile(ProfileType::Localhost, "berth-e2e-no-such-profile"));
    let e = cri.create(&pod_id, &pod, config).await.expect_err("a Localhost profile that is not loaded");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
