#!/usr/bin/env bash
# deploy/test.sh — the chart and the installer together, without a cluster: renders charts/berth
# with mirrors, a runtime handler and config overrides, then runs the real berth-install (debug
# build) with those settings against a fake kind node (a temporary host root holding kind's kubelet
# files) in --dry-run mode, and checks the plans it prints and that the fake node is unchanged.
# helm comes from tools/build.sh. The kubelet switch itself is exercised by the unit tests
# (src/install/tests.rs) and on a real systemd node by the node test.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
helm=$("$repo/tools/build.sh" helm)/helm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "deploy/test.sh: FAIL: $*" >&2
    exit 1
}

nice -n 10 cargo build --quiet --manifest-path "$repo/Cargo.toml" --bin berth-install
installer=$repo/target/debug/berth-install

cat >"$tmp/values.yaml" <<'VALUES'
registryMirrors:
  docker.io: ["http://10.86.0.1:5100"]
runtimeHandlers:
  crun: {binary: /usr/bin/crun}
config:
  cri: {max_concurrent_downloads: 5}
VALUES
"$helm" lint --quiet "$repo/charts/berth" -f "$tmp/values.yaml" >/dev/null
"$helm" template t "$repo/charts/berth" -f "$tmp/values.yaml" >"$tmp/rendered.yaml"
# install.toml: the ConfigMap's block, unindented.
sed -n '/^  install.toml: |/,/^---/p' "$tmp/rendered.yaml" | sed '1d;/^---/d;s/^    //' >"$tmp/install.toml"
grep -q '^switch_kubelet = true' "$tmp/install.toml" || fail "no install.toml in the rendered chart"

root=$tmp/root
mkdir -p "$root/var/lib/kubelet" "$root/etc/default" "$root/etc/cni/net.d" "$tmp/payload/bin"
echo 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=172.18.0.2"' \
    >"$root/var/lib/kubelet/kubeadm-flags.env"
printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n' \
    >"$root/var/lib/kubelet/config.yaml"
echo 'KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service' >"$root/etc/default/kubelet"
echo '{"cniVersion":"0.3.1","name":"kindnet","plugins":[]}' >"$root/etc/cni/net.d/10-kindnet.conflist"
for b in berthd berth-shim berthctl berth-pause berth-install; do echo "$b" >"$tmp/payload/bin/$b"; done
before=$(cd "$root" && find . -type f -exec sha256sum {} + | sort)

run() { "$installer" --host-root "$root" --settings "$tmp/install.toml" --dry-run "$@" 2>"$tmp/stderr"; }
plan=$(run install --payload "$tmp/payload") || fail "install --dry-run: $(cat "$tmp/stderr")"
for want in \
    'write /usr/local/bin/berthd (mode 755): berth binary berthd' \
    'write /etc/berth/config.toml (mode 644): berthd configuration' \
    'write /etc/berth/certs.d/docker.io/hosts.toml (mode 644): registry mirrors' \
    'run: systemctl restart berth.service' \
    'start the host unit berth-switch' \
    'run: systemctl stop kubelet.service' \
    'stop and remove every pod sandbox on unix:///run/containerd/containerd.sock' \
    'run: systemctl disable --now containerd.service' \
    'write /var/lib/kubelet/kubeadm-flags.env (mode 644): point at unix:///run/berth/berth.sock' \
    'write /etc/default/kubelet (mode 644): point at' \
    'wait for the node to be Ready on berth://' \
    "wait for the installer's pod, re-created on berth, to confirm"; do
    grep -qF "$want" <<<"$plan" || fail "install plan lacks \"$want\":"$'\n'"$plan"
done
grep -q 'cgroup driver Systemd' "$tmp/stderr" || fail "the node's cgroup driver was not read: $(cat "$tmp/stderr")"
grep -q '10-berth.conflist' <<<"$plan" && fail "berth's CNI config would replace kindnet's"
uninstall=$(run uninstall) || fail "uninstall --dry-run: $(cat "$tmp/stderr")"
grep -q 'uninstall plan:' <<<"$uninstall" || fail "no uninstall plan: $uninstall"
after=$(cd "$root" && find . -type f -exec sha256sum {} + | sort)
[ "$before" = "$after" ] || fail "--dry-run changed the fake node"

# Settings berthd would refuse are refused before anything happens.
echo '[config.debug]' >>"$tmp/install.toml"
echo 'no_such_key = 1' >>"$tmp/install.toml"
if run install --payload "$tmp/payload" >/dev/null; then fail "a bad config key was accepted"; fi
grep -q 'no_such_key' "$tmp/stderr" || fail "the error does not name the bad key: $(cat "$tmp/stderr")"
echo "deploy/test.sh: ok"
