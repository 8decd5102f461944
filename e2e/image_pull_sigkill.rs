//! berthd killed with SIGKILL in the middle of pulling a large image: after a restart the store is
//! consistent (every content blob hashes to its name) and the same pull succeeds.

use std::time::{Duration, Instant};

use crate::harness::fs::{assert_blobs_match_their_names, disk_usage};
use crate::harness::{Berthd, Registry, images};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_pull_then_restart_and_retry() {
    let reg = Registry::shared();
    let large = &images().large;
    let mut berthd = Berthd::started(&[reg]);
    let used = |b: &Berthd| disk_usage(b.root()).0 + disk_usage(b.state()).0;
    let before = used(&berthd);
    let reference = large.reference(&reg.host());

    let mut cri = berthd.cri().await;
    let pull = {
        let reference = reference.clone();
        tokio::spawn(async move { cri.pull(&reference).await })
    };
    // Kill once a tenth of the image has arrived: well inside the pull.
    let threshold = before + large.layer_bytes() / 10;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            !pull.is_finished(),
            "the pull ended before berthd could be killed mid-pull (raise BERTH_E2E_LARGE_MIB): {:?}",
            pull.await
        );
        if used(&berthd) >= threshold {
            break;
        }
        assert!(Instant::now() < deadline, "less than a tenth of the image arrived in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    berthd.kill9();
    let result = pull.await.expect("pull task");
    assert!(result.is_err(), "the pull reported success although berthd was killed: {result:?}");

    berthd.start();
    assert_blobs_match_their_names(berthd.root());
    let mut cri = berthd.cri().await;
    let id = cri.pull(&reference).await.expect("pull after the restart");
    assert_eq!(id, large.id());
    let image = cri.status(&reference).await.expect("ImageStatus").expect("image present after the retry");
    assert_eq!(image.id, id);
    let blobs = assert_blobs_match_their_names(berthd.root());
    assert!(
        blobs >= 2,
        "no content blobs found under {}: the consistency check is vacuous",
        berthd.root().display()
    );
}
