//! berthctl against a real berthd: version, pull with progress, images ls/rm, export then import of the
//! exported OCI layout, import of `docker save` and OCI archives, content/snapshots/namespaces ls,
//! and JSON output throughout.

use std::process::Command;

use serde_json::Value;

use crate::harness::berthd::{berthctl, berthctl_json as json};
use crate::harness::{Berthd, Registry, images};

fn image_names(v: &Value) -> Vec<String> {
    v.as_array().expect("a list").iter().map(|i| i["name"].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn berthctl_pulls_lists_exports_and_imports() {
    let reg = Registry::shared();
    let busybox = &images().busybox;
    let berthd = Berthd::started(&[reg]);
    let sock = berthd.socket();
    let dir = tempfile::tempdir().unwrap();

    let v = json(sock, &["version"]);
    assert_eq!(v["server"], env!("CARGO_PKG_VERSION"));

    let reference = busybox.reference(&reg.host());
    let pulled = json(sock, &["images", "pull", &reference]);
    assert_eq!(pulled["image_id"], busybox.id());
    let ls = json(sock, &["images", "ls"]);
    assert_eq!(image_names(&ls), vec![reference.clone()]);
    assert_eq!(ls[0]["config_digest"], busybox.id());
    // The table form has aligned columns with a header.
    let table = berthctl(sock, &["images", "ls"]);
    assert!(table.starts_with("REF"), "{table}");
    assert!(table.contains(&reference), "{table}");

    // Export, remove everything, import the export again.
    let exported = dir.path().join("busybox-export.tar");
    berthctl(sock, &["images", "export", exported.to_str().unwrap(), &reference]);
    berthctl(sock, &["images", "rm", "--sync", &reference]);
    assert!(image_names(&json(sock, &["images", "ls"])).is_empty());
    let imported = json(sock, &["images", "import", exported.to_str().unwrap()]);
    assert_eq!(image_names(&imported), vec![reference.clone()]);
    assert_eq!(imported[0]["config_digest"], busybox.id());

    // docker save and OCI archives, into their own namespaces.
    for (ns, archive) in [("dock", images().docker_archive()), ("ocil", images().oci_archive())] {
        let imported = json(sock, &["-n", ns, "images", "import", archive.to_str().unwrap()]);
        let list = imported.as_array().expect("imported images");
        assert_eq!(list.len(), 1, "{imported}");
        assert_eq!(list[0]["config_digest"], busybox.id(), "{ns}: {imported}");
    }
    let namespaces = json(sock, &["namespaces", "ls"]);
    for ns in ["default", "dock", "ocil", "k8s.io"] {
        assert!(namespaces.as_array().unwrap().iter().any(|n| n == ns), "{ns} missing from {namespaces}");
    }

    // Content holds the image's blobs with their GC labels; snapshots hold its layer chain.
    let content = json(sock, &["content", "ls"]);
    let config = content
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["digest"] == busybox.id())
        .unwrap_or_else(|| panic!("config blob missing: {content}"));
    assert!(
        config["labels"]
            .as_object()
            .is_some_and(|l| l.keys().any(|k| k.starts_with("containerd.io/gc.ref.snapshot")))
    );
    let snapshots = json(sock, &["snapshots", "ls"]);
    assert!(!snapshots["snapshots"].as_array().unwrap().is_empty(), "{snapshots}");
    assert!(["overlayfs", "native"].contains(&snapshots["snapshotter"].as_str().unwrap()));

    // A bad archive is refused with a message and leaves no image behind.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar archive at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(["--address", sock.to_str().unwrap(), "-n", "junk", "images", "import", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    assert!(image_names(&json(sock, &["-n", "junk", "images", "ls"])).is_empty());
}
