#!/usr/bin/env bash
# The whole test suite, with all of its set-up, on a fresh Debian 12 machine as root: README.md's test
# command, and all that .ci/run calls.
#
#   ./test.sh            packages, Go, then `cargo test --all-targets` (unit, service and e2e tests:
#                        real registries, runc, CNI plugins, critest), the chart and installer dry
#                        run (deploy/test.sh), then the one-node Kubernetes cluster on berth
#                        (e2e/cluster/cluster.sh) and its kubectl scenarios, and last the kind-like
#                        systemd node switched from containerd to berth by the Helm chart
#                        (deploy/node-test.sh), then Kubernetes' own [NodeConformance] e2e specs on
#                        a fresh one-node cluster on berth (e2e/conformance/node-e2e.sh)
#   ./test.sh --no-cluster      everything but the cluster and the node
#
# What the tests build for themselves lands in caches outside the repository: the Kubernetes tools
# (tools/build.sh: /var/cache/berth-tools, and Go's own caches) and the test images
# (e2e/images/build.sh: /var/cache/berth-images). A cold machine builds them once (tools/README.md has
# the cost); later runs find them. Exits non-zero on the first failed step.
set -euo pipefail

# Debian packages the tests need: PACKAGES of e2e/harness/mod.rs (keep in step), and conntrack for
# kube-proxy, unzip for the Go download, jq for the conformance run's report.
PACKAGES="docker-registry skopeo busybox-static umoci openssl apache2-utils curl runc crun containerd
containernetworking-plugins iptables protobuf-compiler util-linux iproute2 bsdutils unzip conntrack jq"

# The Go toolchain the tools are built with when the machine has none this new: Go's own release as the
# Go module proxy serves it (golang.org/toolchain), checked against this digest.
GO_VERSION=1.26.8
GO_ZIP_SHA256=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7

cluster=true
for arg in "$@"; do
    case $arg in
    --no-cluster) cluster=false ;;
    *)
        sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")"
say() { echo "--- $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the tests need root" >&2
    exit 1
fi
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

say "packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # the list is meant to split into words
apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
# Debian installs the CNI plugins in /usr/lib/cni; berth and the kubelet look in /opt/cni/bin.
if [ ! -e /opt/cni/bin ]; then
    mkdir -p /opt/cni
    ln -s /usr/lib/cni /opt/cni/bin
fi

say "go"
go_ok() { # whether `go` runs and is at least 1.26
    local v
    v=$(go env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    [ "${v%%.*}" -gt 1 ] || [ "$(echo "$v" | cut -d. -f2)" -ge 26 ]
}
if ! go_ok; then
    [ ! -e /usr/local/go ] || {
        echo "test.sh: /usr/local/go holds a Go older than 1.26; move it away first" >&2
        exit 1
    }
    zip=$(mktemp /tmp/go-toolchain.XXXXXX.zip)
    trap 'rm -f "$zip"' EXIT
    curl -sSfo "$zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$GO_VERSION.linux-amd64.zip"
    echo "$GO_ZIP_SHA256  $zip" | sha256sum -c --quiet
    unpack=$(mktemp -d /usr/local/go-unpack.XXXXXX)
    unzip -q "$zip" -d "$unpack"
    mv "$unpack/golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-amd64" /usr/local/go
    rm -rf "$unpack" "$zip"
    chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/*
fi
go version

if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo not found in PATH or \$HOME/.cargo/bin; install a current Rust toolchain with rustup" >&2
    exit 1
fi
cargo --version

say "cargo test --all-targets"
export RUST_BACKTRACE=1
cargo test --all-targets

say "the chart and the installer on a fake kind node (deploy/test.sh)"
deploy/test.sh

if $cluster; then
    say "the one-node cluster on berth: tools, images, cluster.sh up"
    cargo build --bins
    e2e/cluster/cluster.sh down >/dev/null 2>&1 || true
    trap 'e2e/cluster/cluster.sh down' EXIT
    e2e/cluster/cluster.sh up >/dev/null
    say "the cluster's kubectl scenarios"
    e2e/cluster/scenarios.sh
    # The node test runs its own control plane (cluster.sh up --runtime none) on the same ports.
    e2e/cluster/cluster.sh down
    trap - EXIT
    say "berth installed onto a kind-like systemd node with the Helm chart (deploy/node-test.sh)"
    deploy/node-test.sh
    say "Kubernetes' [NodeConformance] specs on berth (e2e/conformance/node-e2e.sh)"
    # A spec that fails once and passes on its second attempt prints FLAKED and does not fail CI.
    e2e/conformance/node-e2e.sh --runtime berth --flake-attempts 2
fi
say "all passed"
