//! `/proc/self/mountinfo`: parsing its lines and finding the mount a path lives on. Shared by the
//! spec builder (propagation of bind mounts) and the stats readers (where the cgroups are); it only
//! reads text and never touches mounts.

use std::path::Path;

/// One line of `/proc/self/mountinfo`, the parts berth looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    /// Optional fields: "shared:N", "master:N" …
    pub optional: Vec<String>,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) =
                std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 4 {
                return None;
            }
            Some(MountInfo {
                mount_point: unescape(fields[4]),
                optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
                fs_type: fields[sep + 1].to_string(),
                super_options: fields[sep + 3].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The mount `path` lives on: the longest mount point that is `path` or one of its parents; of
/// several mounts on the same point, the last one (the one on top).
pub fn lookup<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) && best.is_none_or(|b| m.mount_point.len() >= b.mount_point.len())
        {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn lines_parse_and_the_deepest_mount_wins() {
        let m = parse(
            "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw\n\
             30 22 0:30 / /a\\040b rw master:2 - tmpfs tmpfs rw,size=64k\n\
             garbage\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, "/a b");
        assert_eq!(m[1].optional, ["master:2"]);
        assert_eq!(m[1].fs_type, "tmpfs");
        assert_eq!(m[1].super_options, ["rw", "size=64k"]);
        assert_eq!(lookup(&m, Path::new("/a b/c")).unwrap().fs_type, "tmpfs");
        assert_eq!(lookup(&m, Path::new("/etc")).unwrap().fs_type, "ext4");
    }
}
