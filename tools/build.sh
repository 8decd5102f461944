#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Kubernetes test tools pinned in tools/versions from their Go modules (the glue in tools/go)
# into a cache outside the repo, ${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}/<key>/bin, and prints that
# bin dir last (alone on stdout; progress goes to stderr). <key> is a short hash of tools/versions,
# tools/go/**, this script and the Go version, so it changes only when what would be built changes;
# nothing is rebuilt while the key's bin/ has what was asked for. It never writes into the repo and
# never changes the pins: go.mod/go.sum are used read-only (tools/go/update.sh writes them).
#
# usage: tools/build.sh [--print-dir] [name...]
#   name...      build only these (default: all of them, see ALL below)
#   --print-dir  print the bin dir without building anything; fails unless the names are all there
#
# The six Kubernetes components are one multi-call binary, bin/k8s, with a symlink per component.
# GOCACHE and GOMODCACHE are Go's own (defaults under ~/.cache and ~/go); set them to move the caches.
set -euo pipefail

ALL=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl e2e.test ginkgo
    etcd etcdctl critest crictl containerd containerd-shim-runc-v2 ctr helm)
K8S_COMPONENTS=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)

tools=$(cd "$(dirname "$0")" && pwd)
say() { echo "build.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}
is_in() { # WORD LIST...: whether WORD is one of LIST
    local w=$1 e
    shift
    for e; do [ "$e" = "$w" ] && return 0; done
    return 1
}

print_dir=false
names=()
for arg in "$@"; do
    case $arg in
    --print-dir) print_dir=true ;;
    -h | --help)
        sed -n '/^# usage:/,/^#$/s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    -*) die "unknown option $arg (usage: tools/build.sh [--print-dir] [name...])" ;;
    *)
        is_in "$arg" "${ALL[@]}" k8s || die "unknown tool $arg; known: ${ALL[*]}"
        names+=("$arg")
        ;;
    esac
done
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")

# Go is on the machine (/usr/local/go on this project's machines, not always on PATH).
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || die "go not found: install Go (1.26 or newer) first"

# shellcheck source=versions
. "$tools/versions"

# The key: what is built, and with what. Computed before anything can touch tools/go.
key=$(
    {
        cat "$tools/versions" "$tools/build.sh"
        (cd "$tools/go" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        go env GOVERSION GOARCH
    } | sha256sum | cut -c1-12
)
cache=${BERTH_TOOLS_CACHE:-/var/cache/berth-tools}
dir=$cache/$key
bin=$dir/bin

missing() {
    local n
    for n in "${names[@]}"; do
        [ -x "$bin/$n" ] || printf '%s ' "$n"
    done
}

if $print_dir; then
    todo=$(missing)
    [ -z "$todo" ] || die "$bin lacks $todo(run tools/build.sh)"
    echo "$bin"
    exit 0
fi

if [ -z "$(missing)" ]; then
    say "up to date: $dir ($KUBERNETES, etcd $ETCD, cri-tools $CRI_TOOLS, containerd $CONTAINERD, helm $HELM)"
    echo "$bin"
    exit 0
fi

# What a fresh Debian 12 may lack: the CA roots Go needs to reach the module proxy, and flock.
need=()
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The glue must pin what tools/versions says (update.sh writes both; a hand edit of one is an error).
pinned() { # DIR MODULE VERSION: DIR's go.mod requires (or replaces to) MODULE at VERSION
    grep -Eq "^(require |	)$2 $3( |$)|=> $2 $3$" "$tools/go/$1/go.mod" ||
        die "tools/go/$1/go.mod does not pin $2 $3 as tools/versions says: run tools/go/update.sh"
}
pinned k8s k8s.io/kubernetes "$KUBERNETES"
pinned k8s k8s.io/api "$KUBERNETES_STAGING"
pinned etcd go.etcd.io/etcd/server/v3 "$ETCD"
pinned etcd go.etcd.io/etcd/etcdctl/v3 "$ETCD"
pinned cri-tools sigs.k8s.io/cri-tools "$CRI_TOOLS"
pinned containerd github.com/containerd/containerd/v2 "$CONTAINERD"
pinned helm helm.sh/helm/v4 "$HELM"

mkdir -p "$bin"
exec 9>"$dir/.lock"
flock 9 # a second build.sh of the same key waits here, then finds the binaries built

# Static, reproducible, stripped, from go.mod/go.sum exactly as committed; no workspace, no VCS stamp.
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

# go_out NAME SUBCOMMAND ARGS...: `go SUBCOMMAND -o <tmp> ARGS...`, then the result to bin/NAME once
# it is whole.
go_out() {
    local name=$1 sub=$2
    shift 2
    go "$sub" -o "$bin/.$name.tmp" "$@"
    mv -f "$bin/.$name.tmp" "$bin/$name"
}

# Kubernetes: tags and -X stamps as hack/lib/golang.sh and hack/lib/version.sh (the kubelet reports
# its gitVersion to the apiserver, and e2e.test gates specs on it); the build date is the release's.
# A module release carries no commit: gitCommit is stamped empty rather than left "$Format:%H$".
K8S_TAGS=selinux,notest,grpcnotrace
k8s_ldflags() {
    local date kv minor=${KUBERNETES#v1.} ld="-s -w"
    minor=${minor%%.*}
    date=$(cd "$tools/go/k8s" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
    for kv in gitVersion="$KUBERNETES" gitMajor=1 gitMinor="$minor" gitTreeState=clean buildDate="$date" gitCommit=; do
        ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
    done
    echo "$ld"
}

build_k8s() {
    local c
    (cd "$tools/go/k8s" && go_out k8s build -tags "$K8S_TAGS" -ldflags "$(k8s_ldflags)" .)
    for c in "${K8S_COMPONENTS[@]}"; do
        ln -sfn k8s "$bin/$c"
    done
}
build_e2e.test() {
    (cd "$tools/go/k8s" && go_out e2e.test test -c -tags "$K8S_TAGS" -ldflags "$(k8s_ldflags)" \
        k8s.io/kubernetes/test/e2e)
}
build_ginkgo() {
    (cd "$tools/go/k8s" && go_out ginkgo build -ldflags "-s -w" github.com/onsi/ginkgo/v2/ginkgo)
}
# etcd's version is a constant in its api module; only the git SHA is stamped upstream, and a module
# release has none to give.
build_etcd() { (cd "$tools/go/etcd" && go_out etcd build -ldflags "-s -w" ./etcd); }
build_etcdctl() { (cd "$tools/go/etcd" && go_out etcdctl build -ldflags "-s -w" ./etcdctl); }
# cri-tools: critest is a test binary upstream too (its Makefile: go test -c).
CRI_LDFLAGS="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS#v}"
build_critest() {
    (cd "$tools/go/cri-tools" && go_out critest test -c -ldflags "$CRI_LDFLAGS" sigs.k8s.io/cri-tools/cmd/critest)
}
build_crictl() {
    (cd "$tools/go/cri-tools" && go_out crictl build -ldflags "$CRI_LDFLAGS" sigs.k8s.io/cri-tools/cmd/crictl)
}
# containerd: tags as its Makefile (the shim without gRPC); btrfs needs cgo, so it is left out.
CTD=github.com/containerd/containerd/v2
CTD_LDFLAGS="-s -w -X $CTD/version.Version=$CONTAINERD -X $CTD/version.Package=$CTD"
build_containerd() {
    (cd "$tools/go/containerd" && go_out containerd build -tags urfave_cli_no_docs -ldflags "$CTD_LDFLAGS" $CTD/cmd/containerd)
}
build_containerd-shim-runc-v2() {
    (cd "$tools/go/containerd" && go_out containerd-shim-runc-v2 build -tags "urfave_cli_no_docs no_grpc" \
        -ldflags "$CTD_LDFLAGS" $CTD/cmd/containerd-shim-runc-v2)
}
build_ctr() {
    (cd "$tools/go/containerd" && go_out ctr build -tags urfave_cli_no_docs -ldflags "$CTD_LDFLAGS" $CTD/cmd/ctr)
}
build_helm() {
    (cd "$tools/go/helm" && go_out helm build -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM" \
        helm.sh/helm/v4/cmd/helm)
}

# What to build: each missing name's unit, once (the six components are the one unit k8s).
units=()
for n in $(missing); do
    is_in "$n" "${K8S_COMPONENTS[@]}" && n=k8s
    is_in "$n" "${units[@]}" || units+=("$n")
done
cp "$tools/versions" "$dir/versions"
go env GOVERSION >"$dir/go-version"
say "building ${units[*]} into $bin ($(go env GOVERSION), GOCACHE=$(go env GOCACHE), GOMODCACHE=$(go env GOMODCACHE))"
for u in "${units[@]}"; do
    say "building $u"
    TIMEFORMAT="build.sh: built $u in %0Rs (cpu %0Us user, %0Ss sys)"
    time "build_$u"
done

todo=$(missing)
[ -z "$todo" ] || die "$bin still lacks $todo"
echo "$bin"
