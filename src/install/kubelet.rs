//! Edits of the kubelet's files on a kubeadm (and kind) node, as pure text functions: each returns
//! the new content, and the same content when nothing needs to change, so applying an edit twice is
//! a no-op. Only the lines that name the runtime change; everything else is kept byte for byte.
//!
//! * `/var/lib/kubelet/kubeadm-flags.env`: `KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=… …"`
//!   (kubeadm ≤ 1.33 keeps the endpoint here; flags beat the config file).
//! * `/var/lib/kubelet/config.yaml` and, from kubeadm 1.34, `/var/lib/kubelet/instance-config.yaml`
//!   (patched into config.yaml on upgrades): the top-level `containerRuntimeEndpoint` (unset means
//!   containerd's socket, so it is added) and `imageServiceEndpoint` when set (empty means the
//!   runtime endpoint).
//! * `/etc/default/kubelet` (kind): `--runtime-cgroups=/system.slice/containerd.service`.
//! * `/etc/crictl.yaml`: `runtime-endpoint` and `image-endpoint`.

use crate::config::CgroupDriver;

/// Flags naming the runtime's endpoints in a kubelet command line.
const ENDPOINT_FLAGS: [&str; 2] = ["--container-runtime-endpoint", "--image-service-endpoint"];

/// Rewrites the endpoint flags inside the `KUBELET_KUBEADM_ARGS` line. A file without the flags is
/// returned unchanged: the endpoint is then in the config file.
pub fn edit_flags_env(content: &str, endpoint: &str) -> String {
    map_lines(content, |line| {
        let rest = line.strip_prefix("KUBELET_KUBEADM_ARGS=")?;
        let quoted = rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"');
        let value = if quoted { &rest[1..rest.len() - 1] } else { rest };
        let mut out = Vec::new();
        let mut words = value.split_whitespace();
        let mut changed = false;
        while let Some(w) = words.next() {
            match ENDPOINT_FLAGS.iter().find(|f| w == **f || w.starts_with(&format!("{f}="))) {
                Some(flag) => {
                    if w == *flag {
                        words.next(); // `--flag value` form
                    }
                    let new = format!("{flag}={endpoint}");
                    changed |= w != new;
                    out.push(new);
                }
                None => out.push(w.to_string()),
            }
        }
        if !changed {
            return None;
        }
        let joined = out.join(" ");
        Some(if quoted {
            format!("KUBELET_KUBEADM_ARGS=\"{joined}\"")
        } else {
            format!("KUBELET_KUBEADM_ARGS={joined}")
        })
    })
}

/// The endpoint the flags file names, if any.
pub fn flags_env_endpoint(content: &str) -> Option<String> {
    let line = content.lines().find_map(|l| l.strip_prefix("KUBELET_KUBEADM_ARGS="))?;
    let mut words = line.trim_matches('"').split_whitespace();
    while let Some(w) = words.next() {
        if w == ENDPOINT_FLAGS[0] {
            return words.next().map(str::to_string);
        }
        if let Some(v) = w.strip_prefix("--container-runtime-endpoint=") {
            return Some(v.to_string());
        }
    }
    None
}

/// Sets `containerRuntimeEndpoint` in a KubeletConfiguration (adding it when `add` and it is unset)
/// and `imageServiceEndpoint` where it is set.
pub fn edit_kubelet_yaml(content: &str, endpoint: &str, add: bool) -> String {
    let mut found = false;
    let mut out = map_lines(content, |line| {
        let (key, value) = top_level(line)?;
        if key == "containerRuntimeEndpoint" {
            found = true;
        }
        let set = key == "containerRuntimeEndpoint" || (key == "imageServiceEndpoint" && !value.is_empty());
        (set && value != endpoint).then(|| format!("{key}: {endpoint}"))
    });
    if add && !found && !content.trim().is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("containerRuntimeEndpoint: {endpoint}\n"));
    }
    out
}

/// A top-level scalar of a KubeletConfiguration YAML file.
pub fn yaml_value(content: &str, key: &str) -> Option<String> {
    content.lines().filter_map(top_level).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
}

/// The node's cgroup driver as the kubelet's config file says (the kubelet's default is cgroupfs).
pub fn cgroup_driver(config_yaml: &str) -> CgroupDriver {
    match yaml_value(config_yaml, "cgroupDriver").as_deref() {
        Some("systemd") => CgroupDriver::Systemd,
        _ => CgroupDriver::Cgroupfs,
    }
}

/// Points `--runtime-cgroups=/system.slice/<old>.service` at berth's unit.
pub fn edit_default_kubelet(content: &str, old_unit: &str, new_unit: &str) -> String {
    let old = format!("--runtime-cgroups=/system.slice/{old_unit}");
    let new = format!("--runtime-cgroups=/system.slice/{new_unit}");
    map_lines(content, |line| line.contains(&old).then(|| line.replace(&old, &new)))
}

/// Points crictl's `runtime-endpoint` and `image-endpoint` at `endpoint`.
pub fn edit_crictl_yaml(content: &str, endpoint: &str) -> String {
    map_lines(content, |line| {
        let (key, value) = top_level(line)?;
        let set = (key == "runtime-endpoint" || key == "image-endpoint") && value != endpoint;
        set.then(|| format!("{key}: {endpoint}"))
    })
}

/// `key: value` of an unindented YAML line (value unquoted, comments dropped).
fn top_level(line: &str) -> Option<(&str, &str)> {
    if line.starts_with([' ', '\t', '#', '-']) {
        return None;
    }
    let (key, value) = line.split_once(':')?;
    let value = value.split(" #").next().unwrap_or("").trim().trim_matches(|c| c == '"' || c == '\'');
    Some((key.trim(), value))
}

/// Applies `f` to every line, keeping line endings; `None` keeps the line.
fn map_lines(content: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(content.len() + 64);
    for piece in content.split_inclusive('\n') {
        let (line, end) = match piece.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (piece, ""),
        };
        match f(line) {
            Some(new) => out.push_str(&new),
            None => out.push_str(line),
        }
        out.push_str(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERTH: &str = "unix:///run/berth/berth.sock";
    const CONTAINERD: &str = "unix:///run/containerd/containerd.sock";

    #[test]
    fn flags_env_endpoint_is_replaced_and_the_rest_kept() {
        let env = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=172.18.0.2 --node-labels= --provider-id=kind://docker/kind/kind-control-plane\"\n";
        let out = edit_flags_env(env, BERTH);
        assert_eq!(
            out,
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/berth/berth.sock --node-ip=172.18.0.2 --node-labels= --provider-id=kind://docker/kind/kind-control-plane\"\n"
        );
        assert_eq!(edit_flags_env(&out, BERTH), out, "a second edit changes nothing");
        assert_eq!(flags_env_endpoint(env).as_deref(), Some(CONTAINERD));
        assert_eq!(flags_env_endpoint(&out).as_deref(), Some(BERTH));
        // Reverting is the same edit with the old endpoint.
        assert_eq!(edit_flags_env(&out, CONTAINERD), env);
    }

    #[test]
    fn flags_env_space_form_and_image_endpoint() {
        let env = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint /run/x.sock --image-service-endpoint=unix:///run/x.sock --v=2\"";
        assert_eq!(
            edit_flags_env(env, BERTH),
            format!(
                "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint={BERTH} --image-service-endpoint={BERTH} --v=2\""
            )
        );
        assert_eq!(flags_env_endpoint(env).as_deref(), Some("/run/x.sock"));
    }

    #[test]
    fn flags_env_without_endpoint_is_unchanged() {
        // kubeadm 1.34+: the endpoint lives in config.yaml / instance-config.yaml.
        let env = "KUBELET_KUBEADM_ARGS=\"--node-ip=172.18.0.2 --node-labels=\"\n";
        assert_eq!(edit_flags_env(env, BERTH), env);
        assert_eq!(flags_env_endpoint(env), None);
    }

    #[test]
    fn kubelet_yaml_endpoint_is_set_or_added() {
        let yaml = "apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  anonymous:\n    enabled: false\ncgroupDriver: systemd\ncgroupRoot: /kubelet\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\nkind: KubeletConfiguration\n";
        let out = edit_kubelet_yaml(yaml, BERTH, true);
        assert_eq!(out, yaml.replace(CONTAINERD, BERTH));
        assert_eq!(edit_kubelet_yaml(&out, BERTH, true), out);
        assert_eq!(yaml_value(&out, "containerRuntimeEndpoint").as_deref(), Some(BERTH));
        assert_eq!(cgroup_driver(yaml), CgroupDriver::Systemd);

        let unset = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nimageServiceEndpoint: \"\"\n";
        let out = edit_kubelet_yaml(unset, BERTH, true);
        assert_eq!(
            out,
            format!("{unset}containerRuntimeEndpoint: {BERTH}\n"),
            "an empty image endpoint stays empty"
        );
        assert_eq!(
            edit_kubelet_yaml(unset, BERTH, false),
            unset,
            "instance-config without the key is left alone"
        );
        assert_eq!(cgroup_driver(unset), CgroupDriver::Cgroupfs);
    }

    #[test]
    fn nested_keys_of_the_same_name_are_not_touched() {
        let yaml = "kind: KubeletConfiguration\nsomething:\n  containerRuntimeEndpoint: keep\ncontainerRuntimeEndpoint: \"unix:///run/containerd/containerd.sock\" # set by kubeadm\n";
        let out = edit_kubelet_yaml(yaml, BERTH, true);
        assert_eq!(
            out,
            format!(
                "kind: KubeletConfiguration\nsomething:\n  containerRuntimeEndpoint: keep\ncontainerRuntimeEndpoint: {BERTH}\n"
            )
        );
    }

    #[test]
    fn default_kubelet_and_crictl() {
        let d = "KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service\n";
        let out = edit_default_kubelet(d, "containerd.service", "berth.service");
        assert_eq!(out, "KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/berth.service\n");
        assert_eq!(edit_default_kubelet(&out, "containerd.service", "berth.service"), out);
        assert_eq!(edit_default_kubelet(&out, "berth.service", "containerd.service"), d);

        let c = "runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10\n";
        let out = edit_crictl_yaml(c, BERTH);
        assert_eq!(out, c.replace(CONTAINERD, BERTH));
    }
}
