//! Metadata writes on a full disk (issue 14 item 3). berth keeps disk allocated ahead of its database
//! so that deletions work on a full disk; the test takes that reserve away and fills the root, so that
//! a write needing new space fails. CreateContainer then fails with ResourceExhausted naming the
//! filesystem and leaves no container behind; once space is freed the same berthd writes again
//! (without a restart); with writes failing again berthd is SIGKILLed, starts on the still full disk
//! with a consistent database (the pod and its running container, nothing half-created), and after
//! space is freed everything works and the pod goes without a leak.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::cri::api::{ContainerConfig, ContainerState, PodSandboxState};
use tonic::Code;

use crate::harness::disk::{On, SmallFs, berthd_on};
use crate::harness::leaks::assert_back_to;
use crate::harness::pod::PodConfig;
use crate::harness::{Berthd, Cri, Registry};

/// Annotations this large make a container record that cannot fit in the database's free pages.
const BIG: usize = 2 << 20;

fn big_container(pod: &PodConfig, image: &str, name: &str) -> ContainerConfig {
    let mut c = pod.container(name, image).command(&["sleep", "100000"]).build();
    c.annotations.insert("e2e/ballast".into(), "x".repeat(BIG));
    c
}

/// Takes away the disk berth keeps allocated past the end of its database file and fills the root,
/// until the database has no allocated space left to grow into.
fn starve(root: &SmallFs, berthd: &Berthd) {
    use std::os::unix::fs::MetadataExt;
    let db = berthd.root().join("meta.redb");
    for _ in 0..16 {
        root.fill();
        let f = std::fs::OpenOptions::new().write(true).open(&db).expect("opening meta.redb");
        let len = f.metadata().expect("stat meta.redb").len();
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&f, flags, len, 1 << 30).expect("punching the reserve of meta.redb");
        root.fill();
        // berthd tops its reserve up after each commit: it may have taken the punched space back.
        let m = f.metadata().expect("stat meta.redb");
        if m.blocks() * 512 <= m.len() {
            return;
        }
    }
    panic!("berthd kept re-allocating the reserve of {}", db.display());
}

/// Creates large containers until a CreateContainer fails for lack of space (the database file may
/// hold free pages to fill first); checks the failure and returns the ids of those that fit.
async fn create_until_out_of_space(
    cri: &mut Cri,
    pod_id: &str,
    pod: &PodConfig,
    image: &str,
    root: &SmallFs,
    name: &str,
) -> Vec<String> {
    let mut created = Vec::new();
    for i in 0..32 {
        match cri.create(pod_id, pod, big_container(pod, image, &format!("{name}-{i}"))).await {
            Ok(id) => created.push(id),
            Err(err) => {
                assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
                let named = format!("no space left on the filesystem of {}", root.path().display());
                assert!(err.message().contains(&named), "the full filesystem is not named: {err:?}");
                assert!(err.message().contains("metadata database"), "{err:?}");
                return created;
            }
        }
    }
    panic!("32 containers of {BIG} bytes each were recorded on a full disk");
}

/// The ids of every container, sorted.
async fn container_ids(cri: &mut Cri) -> Vec<String> {
    let mut ids: Vec<String> =
        cri.containers().await.expect("ListContainers").into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_writes_fail_cleanly_and_survive_a_kill() {
    let reg = Registry::shared();
    let root = SmallFs::mount("root", 64);
    let (mut berthd, before, mut cri, image) = berthd_on(&root, On::Root, reg).await;
    let pod = berthd.pod("full-metadata");
    let pod_id = cri.run_pod(&pod).await.expect("RunPodSandbox");
    let keep = pod.container("keep", &image).command(&["sleep", "100000"]).build();
    let keep = cri.create_start(&pod_id, &pod, keep).await.expect("the container that stays");

    // A write that needs space fails, and rolls back: no record, no container.
    starve(&root, &berthd);
    let mut expected = vec![keep.clone()];
    expected.extend(create_until_out_of_space(&mut cri, &pod_id, &pod, &image, &root, "first").await);
    expected.sort();
    assert_eq!(container_ids(&mut cri).await, expected, "a failed CreateContainer left a container");

    // Space is freed: the same berthd writes again.
    root.unfill();
    let fits = cri
        .create(&pod_id, &pod, big_container(&pod, &image, "fits"))
        .await
        .expect("CreateContainer with room");
    expected.push(fits);

    // Writes fail again, and berthd is killed while they keep failing.
    starve(&root, &berthd);
    expected.extend(create_until_out_of_space(&mut cri, &pod_id, &pod, &image, &root, "second").await);
    expected.sort();
    let failures = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (failures, pod, image, pod_id) = (failures.clone(), pod.clone(), image.clone(), pod_id.clone());
        let mut cri = berthd.cri().await;
        tokio::spawn(async move {
            for i in 0.. {
                match cri.create(&pod_id, &pod, big_container(&pod, &image, &format!("doomed-{i}"))).await {
                    Err(e) if e.code() == Code::ResourceExhausted => failures.fetch_add(1, Ordering::SeqCst),
                    // berthd is gone.
                    Err(_) => return,
                    Ok(id) => panic!("CreateContainer {id} succeeded on a full disk"),
                };
            }
        })
    };
    let guard = Instant::now() + Duration::from_secs(120);
    while failures.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < guard, "the failing writes stopped coming");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(cri);
    berthd.kill9();
    writer.await.expect("the writer task");

    // Back on the still full disk: the database is as the last good commit left it.
    berthd.start();
    let mut cri = berthd.cri().await;
    let pods = cri.pods().await.expect("ListPodSandbox");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32, "{pods:?}");
    assert_eq!(container_ids(&mut cri).await, expected, "containers after the restart");
    let status = cri.container_status(&keep).await.expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32, "{status:?}");
    assert!(cri.status(&image).await.expect("ImageStatus").is_some(), "the image record is gone");

    // With room again, everything works.
    root.unfill();
    let id = cri
        .create_start(&pod_id, &pod, big_container(&pod, &image, "after-restart"))
        .await
        .expect("a container after the restart");
    assert_eq!(cri.sh(&id, "echo ok").await.trim(), "ok");
    cri.stop_remove_pod(&pod_id).await.expect("stop and remove the pod");
    assert_back_to(&berthd, &before);
}
