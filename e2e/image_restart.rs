//! Pulled images survive a restart of berthd, clean (SIGTERM) or not (SIGKILL after the pulls
//! returned): ListImages answers the same before and after (berth's built-in pause image, imported
//! at start and pinned, included).

use berth::config::BUILTIN_PAUSE_IMAGE;
use berth::cri::api::Image;

use crate::harness::{Berthd, Cri, Registry, images};

/// ListImages with tags, digests and images in a stable order.
async fn listed(cri: &mut Cri) -> Vec<Image> {
    let mut images = cri.list().await.expect("ListImages");
    for i in &mut images {
        i.repo_tags.sort();
        i.repo_digests.sort();
    }
    images.sort_by(|a, b| a.id.cmp(&b.id));
    images
}

async fn images_survive(crash: bool) {
    let reg = Registry::shared();
    let host = reg.host();
    let mut berthd = Berthd::started(&[reg]);
    let mut cri = berthd.cri().await;
    let all = images();
    let references = [
        all.busybox.tag_reference(&host, "1"),
        all.busybox.tag_reference(&host, "2"),
        all.zstd.reference(&host),
        all.user.digest_reference(&host),
        all.multiarch.reference(&host),
    ];
    for r in &references {
        cri.pull(r).await.unwrap_or_else(|e| panic!("pulling {r}: {e:?}"));
    }
    let before = listed(&mut cri).await;
    let pause = before.iter().find(|i| i.repo_tags.iter().any(|t| t == BUILTIN_PAUSE_IMAGE));
    assert!(pause.is_some_and(|p| p.pinned), "the built-in pause image is not listed pinned: {before:#?}");
    // busybox:1, :2 and multiarch:1 are one image (the index's host manifest is busybox's).
    assert_eq!(before.len(), 3 + 1, "{before:#?}");
    let busybox = before.iter().find(|i| i.id == all.busybox.id()).expect("busybox listed");
    assert_eq!(busybox.repo_tags.len(), 3, "{busybox:?}");
    drop(cri);

    if crash {
        berthd.kill9();
        berthd.start();
    } else {
        berthd.restart();
    }
    let mut cri = berthd.cri().await;
    assert_eq!(listed(&mut cri).await, before);
    for r in &references {
        assert!(cri.status(r).await.expect("ImageStatus").is_some(), "{r} lost across the restart");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_a_clean_restart() {
    images_survive(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_sigkill_after_their_pulls() {
    images_survive(true).await;
}
