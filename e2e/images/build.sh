#!/usr/bin/env bash
# build.sh — builds the project's own test images (look-alikes of the images critest and Kubernetes'
# e2e specs pull; IMAGES.md lists them) and pushes them to a registry under their ORIGINAL repository
# paths, e.g. REGISTRY/e2e-test-images/busybox:1.29-2. A runtime whose mirrors send registry.k8s.io,
# k8s.gcr.io, gcr.io, docker.io, quay.io and public.ecr.aws to http://REGISTRY then finds every image
# under the name the tests use (critest compares RepoTags with those names).
#
#   e2e/images/build.sh [--creds USER:PASS] REGISTRY [REPO:TAG...]
#                        build what is missing, then push every image (or only the named ones)
#   e2e/images/build.sh --key     print the key of the image definitions (what a build is cached by)
#   e2e/images/build.sh --list    print every REPO:TAG a push sends
#
# Builds go to ${BERTH_IMAGES_CACHE:-/var/cache/berth-images}/layouts/<key> (an OCI layout), where
# <key> hashes everything under e2e/images (but IMAGES.md), tools/versions, the Go and gcc versions:
# the images are built once per key and pushed from there. Layers and configs have fixed timestamps
# and owners, so a rebuild from the same inputs gives the same digests. The static busybox every image
# is made of is built once from Debian's busybox source package (see build_busybox) and kept under
# $CACHE/busybox/<version>; agnhost and sample-apiserver are built from Kubernetes' Go modules pinned
# in e2e/images/go with Go's own caches, as tools/build.sh builds the test tools, and etcd is taken
# from tools/build.sh. CoreDNS is built from its own Go module at COREDNS_VERSION (its go.mod pins its
# deps, which differ from Kubernetes') and kept under $CACHE/coredns/<version>. Debian packages it lacks
# are installed with apt-get. It must never write into the repository.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${BERTH_IMAGES_CACHE:-/var/cache/berth-images}
EPOCH=1704067200 # 2024-01-01T00:00:00Z, every file's mtime and every config's creation time
CREATED=2024-01-01T00:00:00Z
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

say() { echo "build.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH=/usr/local/go/bin:$PATH
fi

need_packages() {
    local missing=() p
    for p in umoci skopeo gcc make file; do command -v $p >/dev/null || missing+=("$p"); done
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    [ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
    command -v bzip2 >/dev/null || missing+=(bzip2)
    [ -x /bin/bash-static ] || missing+=(bash-static)
    command -v flock >/dev/null || missing+=(util-linux)
    [ -x /usr/bin/dig ] || missing+=(bind9-dnsutils)
    [ -x /bin/nc.openbsd ] || missing+=(netcat-openbsd)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v go >/dev/null || die "go not found: install Go (1.26 or newer) first, as tools/build.sh needs"
}

# The key: what would be built, and with what (tools/versions for the etcd that tools/build.sh
# builds). IMAGES.md is left out so that documenting an image does not rebuild them all.
image_key() {
    {
        (cd "$HERE" && find . -type f ! -name IMAGES.md -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        cat "$HERE/../../tools/versions" 2>/dev/null || true
        go env GOVERSION GOARCH
        gcc --version | head -1
    } | sha256sum | cut -c1-12
}

# CoreDNS: the version kubeadm of the pinned Kubernetes deploys (cmd/kubeadm/app/constants CoreDNSVersion;
# build_images checks that they agree).
COREDNS_VERSION=v1.14.2

# ------------------------------------------------------------------ what is pushed where
# One line per push: <layout tag> <repository path:tag>. The runtime's mirrors add the registry host.
PUSHES="
busybox e2e-test-images/busybox:1.29-2
busybox e2e-test-images/busybox:1.36.1-1
busybox e2e-test-images/busybox:1.37.0-1
busybox library/busybox:latest
bb-1.35.0-glibc docker/library/busybox:1.35.0-glibc
bb-1-uclibc docker/library/busybox:1-uclibc
bb-1 docker/library/busybox:1
bb-1-glibc docker/library/busybox:1-glibc
bb-1-musl docker/library/busybox:1-musl
pause pause:3.9
sandbox pause:3.6
sandbox pause:3.10
sandbox pause:3.10.1
sandbox pause:3.10.2
test-image-1 k8s-staging-cri-tools/test-image-1:latest
test-image-2 k8s-staging-cri-tools/test-image-2:latest
test-image-3 k8s-staging-cri-tools/test-image-3:latest
test-image-latest k8s-staging-cri-tools/test-image-latest:latest
test-image-digest k8s-staging-cri-tools/test-image-digest:latest
tags k8s-staging-cri-tools/test-image-tags:1
tags k8s-staging-cri-tools/test-image-tags:2
tags k8s-staging-cri-tools/test-image-tags:3
tag-test k8s-staging-cri-tools/test-image-tag:test
tag-all k8s-staging-cri-tools/test-image-tag:all
test-image-user-uid k8s-staging-cri-tools/test-image-user-uid:latest
test-image-user-username k8s-staging-cri-tools/test-image-user-username:latest
test-image-user-uid-group k8s-staging-cri-tools/test-image-user-uid-group:latest
test-image-user-username-group k8s-staging-cri-tools/test-image-user-username-group:latest
predefined-group k8s-staging-cri-tools/test-image-predefined-group:latest
nonewprivs e2e-test-images/nonewprivs:1.3
nonewprivs e2e-test-images/nonewprivs:1.4
glibc-dns-testing e2e-test-images/glibc-dns-testing:2.0.0
nonroot e2e-test-images/nonroot:1.4
nonroot e2e-test-images/nonroot:1.5
ipc-utils e2e-test-images/ipc-utils:1.3
ipc-utils e2e-test-images/ipc-utils:1.4
nginx e2e-test-images/nginx:1.14-2
nginx e2e-test-images/nginx:1.14-4
nginx e2e-test-images/nginx:1.15-4
nginx-new e2e-test-images/nginx:1.27-0
hostnet-nginx k8s-staging-cri-tools/hostnet-nginx-amd64:latest
httpd e2e-test-images/httpd:2.4.38-4
httpd e2e-test-images/httpd:2.4.39-4
agnhost e2e-test-images/agnhost:2.66.1
agnhost-prev e2e-test-images/agnhost:2.55
agnhost k8s-authenticated-test/agnhost:2.6
kitten e2e-test-images/kitten:1.8
nautilus e2e-test-images/nautilus:1.8
sample-apiserver e2e-test-images/sample-apiserver:1.29.2
etcd etcd:3.6.8-0
coredns coredns/coredns:$COREDNS_VERSION
"

# ------------------------------------------------------------------ static busybox
# Debian's busybox-static will not do: it lacks pgrep and ipcs (critest execs `pgrep sleep` and
# `ipcs -m`), and its shell runs applets in-process (FEATURE_SH_STANDALONE), so a masked /bin/ls
# still runs and critest's MaskedPaths spec fails. So busybox is built from Debian's own source
# package (Debian's patches applied) with upstream `make defconfig` + static, minus tc (which does not
# build against current kernel headers). The source comes through apt with a private state dir whose
# deb-src lines are this machine's own deb lines, so the system's apt setup is left alone.
# One more change from defconfig: FEATURE_DI_ENV_HACK (a config option of Debian's patches) keeps
# environment variables whose names are not shell names (`data-1`, `p-data-1`) and passes them on to
# commands. Upstream ash drops them; Kubernetes' envFrom specs ("ConfigMap/Secrets should be consumable
# via the environment" [NodeConformance]) run `sh -c env` in the e2e busybox and expect them.
BUSYBOX_CONFIG=(-e 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/' -e 's/^CONFIG_TC=y/# CONFIG_TC is not set/'
    -e 's/^# CONFIG_FEATURE_DI_ENV_HACK is not set/CONFIG_FEATURE_DI_ENV_HACK=y/')
build_busybox() { # prints the path of the static busybox
    local dir=$CACHE/busybox have apt src ver work flavour
    # Built busyboxes are kept by source version and by a hash of the config changes.
    flavour=$(printf '%s\n' "${BUSYBOX_CONFIG[@]}" | sha256sum | cut -c1-8)
    have=$(find "$dir" -mindepth 2 -maxdepth 2 -path "*-$flavour/busybox" -type f 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$have" ]; then
        echo "$have"
        return
    fi
    apt=$dir/apt
    mkdir -p "$apt/lists/partial" "$apt/sources.list.d"
    : >"$apt/sources.list"
    if [ -f /etc/apt/sources.list ]; then
        sed -n 's/^deb \(.*\)/deb-src \1/p' /etc/apt/sources.list >"$apt/sources.list"
    fi
    for src in /etc/apt/sources.list.d/*.sources; do
        [ -e "$src" ] || continue
        sed 's/^Types: deb$/Types: deb-src/' "$src" >"$apt/sources.list.d/$(basename "$src")"
    done
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
        -o "Dir::State::Lists=$apt/lists" -o "APT::Sandbox::User=root")
    say "fetching Debian's busybox source package"
    apt-get "${opts[@]}" update -qq >/dev/null
    work=$(mktemp -d /tmp/berth-busybox.XXXXXX)
    (cd "$work" && apt-get "${opts[@]}" source --download-only -qq busybox >/dev/null)
    src=$(ls "$work"/busybox_*.dsc)
    ver=$(basename "$src" .dsc)
    ver=${ver#busybox_}
    # --no-check: apt verified these files against the signed Sources index; dpkg-source would only
    # warn that no Debian keyring is installed.
    (cd "$work" && dpkg-source --no-check -x "$src" busybox >/dev/null)
    say "building busybox $ver (static, upstream defconfig)"
    (
        cd "$work/busybox"
        export KCONFIG_NOTIMESTAMP=1 SOURCE_DATE_EPOCH=$EPOCH
        make defconfig >/dev/null
        sed -i "${BUSYBOX_CONFIG[@]}" .config
        yes "" | make oldconfig >/dev/null
        # gcc's warnings on busybox's code are many and harmless: shown only if the build fails
        nice -n 19 make -j"$(nproc)" >make.log 2>&1 || {
            tail -40 make.log >&2
            exit 1
        }
    ) || die "building busybox $ver failed"
    file "$work/busybox/busybox" | grep -q 'statically linked' || die "busybox $ver did not link statically"
    env -i data-1=kept "$work/busybox/busybox" sh -c "$work/busybox/busybox env" | grep -qx data-1=kept ||
        die "busybox $ver's sh drops environment variables that are not shell names"
    ver=$ver-$flavour
    mkdir -p "$dir/$ver"
    cp "$work/busybox/.config" "$dir/$ver/config"
    cp "$work/busybox/busybox" "$dir/$ver/.busybox.tmp"
    mv "$dir/$ver/.busybox.tmp" "$dir/$ver/busybox"
    rm -rf "$work"
    echo "$dir/$ver/busybox"
}

# ------------------------------------------------------------------ programs from Go modules
# agnhost (k8s.io/kubernetes/test/images/agnhost) and sample-apiserver (k8s.io/sample-apiserver) are
# built from the glue module in e2e/images/go at the Kubernetes version tools/versions pins.
check_go_pins() {
    local versions=$HERE/../../tools/versions KUBERNETES
    [ -f "$versions" ] || return 0
    KUBERNETES=$(sed -n 's/^KUBERNETES=//p' "$versions")
    grep -Eq "^(require |	)k8s.io/kubernetes $KUBERNETES( |$)" "$HERE/go/go.mod" ||
        die "e2e/images/go/go.mod does not pin k8s.io/kubernetes $KUBERNETES as tools/versions says: run e2e/images/go/update.sh"
}
build_go() { # OUT PACKAGE
    say "building $2"
    (cd "$HERE/go" && CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -trimpath -buildvcs=false" \
        nice -n 19 go build -ldflags "-s -w" -o "$1" "$2")
}
# etcd comes from the project's tools build (tools/build.sh, the version tools/versions pins).
build_etcd() { # OUT
    local bin
    say "building etcd with tools/build.sh"
    bin=$("$HERE/../../tools/build.sh" etcd | tail -1)
    install -m 755 "$bin/etcd" "$1"
}

# CoreDNS from its own module with its own go.mod and go.sum (`go install pkg@version`), as upstream
# builds it (CGO_ENABLED=0, static), kept by version under $CACHE/coredns.
build_coredns() { # prints the path of the static coredns
    local dir=$CACHE/coredns/$COREDNS_VERSION gobin
    if [ ! -x "$dir/coredns" ]; then
        say "building CoreDNS $COREDNS_VERSION from github.com/coredns/coredns"
        gobin=$(mktemp -d /tmp/berth-coredns.XXXXXX)
        (cd "$gobin" && CGO_ENABLED=0 GOWORK=off GOBIN=$gobin GOFLAGS="-trimpath -buildvcs=false" \
            nice -n 19 go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION") ||
            die "building CoreDNS $COREDNS_VERSION failed"
        file "$gobin/coredns" | grep -q 'statically linked' || die "CoreDNS did not link statically"
        mkdir -p "$dir"
        mv "$gobin/coredns" "$dir/.coredns.tmp"
        mv "$dir/.coredns.tmp" "$dir/coredns"
        rm -rf "$gobin"
    fi
    echo "$dir/coredns"
}

# k8s.io/kubernetes's source in Go's module cache (kitten's and nautilus's pages, porter's test cert).
k8s_source() {
    (cd "$HERE/go" && GOWORK=off GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)
}

# ------------------------------------------------------------------ OCI layout helpers
mklayer() { # DIR NAME: layers/NAME.tar, owners and modes as staged, fixed mtimes, sorted
    tar --numeric-owner --sort=name --mtime="@$EPOCH" --format=gnu -C "$1" -cf "$WORK/layers/$2.tar" .
}
newimg() { # TAG LAYER...
    local tag=$1 l
    shift
    umoci new --image "$LAYOUT:$tag"
    for l in "$@"; do
        umoci raw add-layer --image "$LAYOUT:$tag" --history.created "$CREATED" \
            --history.created_by "e2e/images/build.sh: layer $l" "$WORK/layers/$l.tar"
    done
}
cfg() { # TAG umoci-config-flags...
    local tag=$1
    shift
    umoci config --no-history --created "$CREATED" --author berth --image "$LAYOUT:$tag" \
        --config.env "$PATH_ENV" "$@"
}
stage() { mkdir -p "$WORK/$1" && echo "$WORK/$1"; }
by_digest() { # DIR DIGEST: where agnhost's fake-registry-server keeps DIGEST's content
    local hash=${2#sha256:}
    echo "$1/sha256/${hash:0:2}/$hash/data"
}
fake_registry() { # DIR LAYOUT-TAG TAG: DIR/manifests, DIR/blobs as fake-registry-server serves them
    local dir=$1 tmp=$WORK/fake-registry-$2 m digest f
    skopeo copy --quiet "oci:$LAYOUT:$2" "dir:$tmp"
    for f in "$tmp"/*; do
        case $(basename "$f") in manifest.json | version) continue ;; esac
        m=$(by_digest "$dir/blobs" "sha256:$(basename "$f")")
        mkdir -p "$(dirname "$m")"
        install -m 644 "$f" "$m"
    done
    # The server takes the Content-Type from the manifest's mediaType, which umoci leaves out.
    sed 's|^{"schemaVersion":2,|{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",|' \
        "$tmp/manifest.json" >"$tmp/manifest.typed"
    grep -q '"mediaType":"application/vnd.oci.image.manifest.v1+json","config"' "$tmp/manifest.typed" ||
        die "fake_registry: unexpected manifest from umoci: $(cat "$tmp/manifest.json")"
    digest=sha256:$(sha256sum <"$tmp/manifest.typed" | cut -d' ' -f1)
    m=$(by_digest "$dir/manifests" "$digest")
    mkdir -p "$(dirname "$m")"
    install -m 644 "$tmp/manifest.typed" "$m"
    echo "$digest" >"$dir/manifests/$3"
    chmod 644 "$dir/manifests/$3"
}

# The dnsutils and netcat layers on the busybox base must run as in a container: no ld.so.cache, no
# host libraries. In a network namespace of its own, CoreDNS serves one name; dig (UDP, TCP, +search
# through resolv.conf's search list, +short) and getent (glibc's nss dns) chrooted into the layers ask
# it, and nc (as the Services specs run it) connects to its TCP port.
check_dns_tools() { # BUSYBOX-ROOTFS DNSUTILS-ROOTFS NETCAT-ROOTFS COREDNS
    local c=$WORK/check-dns out
    mkdir -p "$c"
    cp -a "$1/." "$2/." "$3/." "$c/"
    printf 'nameserver 127.0.0.1\nsearch berth.test\noptions ndots:1\n' >"$c/etc/resolv.conf"
    printf '127.0.0.1\tlocalhost\n' >"$c/etc/hosts"
    printf '.:53 {\n    hosts {\n        192.0.2.7 probe.berth.test\n    }\n}\n' >"$WORK/Corefile.check"
    # shellcheck disable=SC2016 # the script is expanded by the inner shell
    out=$(unshare --net sh -c '
        c=$1
        ask() { chroot "$c" /bin/env -i PATH=/usr/bin:/bin "$@" 2>&1; }
        ip link set lo up
        "$2" -conf "$3" -quiet >"$4" 2>&1 &
        for _ in $(seq 1 100); do
            [ "$(ask dig +short +time=1 +tries=1 probe.berth.test A)" = 192.0.2.7 ] && break
            sleep 0.1
        done
        echo "udp: $(ask dig +notcp +noall +answer +search probe A | tr -s " \t" " ")"
        echo "tcp: $(ask dig +tcp +noall +answer +search probe A | tr -s " \t" " ")"
        echo "short: $(ask dig +short probe.berth.test A)"
        echo "getent: $(ask getent hosts probe.berth.test | tr -s " \t" " ")"
        echo "nc: $(echo x | ask nc -v -t -w 2 127.0.0.1 53 >/dev/null 2>&1 && echo connected)"
        kill $!
        wait
    ' _ "$c" "$4" "$WORK/Corefile.check" "$WORK/coredns-check.log" 2>&1) || true
    [ "$out" = "udp: probe.berth.test. 3600 IN A 192.0.2.7
tcp: probe.berth.test. 3600 IN A 192.0.2.7
short: 192.0.2.7
getent: 192.0.2.7 probe.berth.test
nc: connected" ] ||
        die "dig, getent or nc do not work on the busybox base with their libraries: $out (coredns: $(cat "$WORK/coredns-check.log"))"
    rm -rf "$c"
}

# A layer of Debian programs from this machine with exactly their shared libraries (ldd) and glibc's
# loader, at the paths ldd names; prints the layer's rootfs. Each SPEC is SOURCE:PATH-IN-THE-IMAGE.
debian_layer() { # NAME SPEC...
    local name=$1 dir spec t
    shift
    dir=$(stage "rootfs-$name")
    for spec; do
        install -D -m 755 "${spec%%:*}" "$dir${spec#*:}"
        ldd "${spec%%:*}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && NF > 1 { print $1 }'
    done | sort -u | while read -r t; do
        mkdir -p "$dir$(dirname "$t")"
        cp -L --preserve=mode "$t" "$dir$t"
    done
    mklayer "$dir" "$name"
    echo "$dir"
}

# ------------------------------------------------------------------ the images
build_images() { # LAYOUT
    local bb k8s R P D G N T H A K U name user spec t n coredns
    bb=$(build_busybox)
    mkdir -p "$WORK/layers" "$WORK/bin"
    umoci init --layout "$LAYOUT"

    for n in pause nnp nginx; do
        gcc -static -O2 -Wall -Wextra -o "$WORK/bin/$n" "$HERE/src/$n.c"
        strip "$WORK/bin/$n"
    done

    # busybox base: what the official busybox image has (applets as hard links in /bin, NOT symlinks:
    # critest's MaskedPaths spec masks /bin/ls, and masking a symlink masks its target, busybox).
    R=$(stage rootfs-busybox)
    mkdir -p "$R"/{bin,dev,etc,home,proc,root,sys,tmp,run,usr/bin,usr/sbin,usr/local/bin,var/spool/mail,var/www}
    chmod 1777 "$R/tmp"
    chmod 700 "$R/root"
    ln -s ../run "$R/var/run"
    install -m 755 "$bb" "$R/bin/busybox"
    for t in $("$bb" --list); do [ "$t" = busybox ] || ln "$R/bin/busybox" "$R/bin/$t"; done
    install -m 644 "$HERE"/rootfs/base/etc/{passwd,group,nsswitch.conf} "$R/etc/"
    sed 's/^\([^:]*\):.*/\1:*:10933:0:99999:7:::/' "$R/etc/passwd" >"$R/etc/shadow"
    chmod 600 "$R/etc/shadow"
    mklayer "$R" busybox

    # busybox (CMD sh): critest's default image, Kubernetes' e2e busybox, `crictl pull busybox`
    newimg busybox busybox
    cfg busybox --config.cmd sh
    # critest's image-listing benchmarks want five distinct images
    for t in 1.35.0-glibc 1-uclibc 1 1-glibc 1-musl; do
        newimg "bb-$t" busybox
        cfg "bb-$t" --config.cmd sh --config.label "berth.test.variant=$t"
    done
    # ipc-utils: upstream is alpine + util-linux for ipcs; busybox has ipcs
    newimg ipc-utils busybox
    cfg ipc-utils --config.cmd sh --config.label berth.test.image=ipc-utils
    # dnsutils: Debian's own `dig` (bind9-dnsutils) and `getent` (libc-bin) with exactly their shared
    # libraries (ldd) and glibc's loader, from this machine (Debian 12, the base of upstream's
    # glibc-dns-testing). Kubernetes' DNS probes run `dig +notcp|+tcp +noall +answer +search NAME`,
    # `dig +short NAME TYPE` and `getent hosts NAME` in agnhost and glibc-dns-testing: one layer, one
    # digest, in both. Busybox stays the shell and the rest (hostname, seq, sleep, test, echo).
    U=$(debian_layer dnsutils /usr/bin/dig:/usr/bin/dig /usr/bin/getent:/usr/bin/getent)
    # netcat: Debian's netcat-openbsd as /usr/bin/nc (before busybox's /bin/nc in PATH), as upstream
    # agnhost installs alpine's netcat-openbsd: the Services [Conformance] specs run `nc -v -t -w 2`
    # and `nc -v -u -w 2` in agnhost pods, and busybox's nc has no -t.
    N=$(debian_layer netcat /bin/nc.openbsd:/usr/bin/nc)
    # CoreDNS as /coredns, its own layer: the coredns image, and agnhost and glibc-dns-testing, which
    # upstream ship it too (the "configurable pod resolv.conf" spec runs `/coredns -conf ...` in agnhost).
    grep -q "CoreDNSVersion = \"$COREDNS_VERSION\"" "$(k8s_source)/cmd/kubeadm/app/constants/constants.go" ||
        die "COREDNS_VERSION $COREDNS_VERSION is not the CoreDNS of the pinned Kubernetes' kubeadm"
    coredns=$(build_coredns)
    D=$(stage rootfs-coredns)
    install -m 755 "$coredns" "$D/coredns"
    mklayer "$D" coredns
    check_dns_tools "$R" "$U" "$N" "$coredns"

    # coredns: upstream is gcr.io/distroless/static-debian12:nonroot + /coredns, `USER nonroot:nonroot`,
    # `WORKDIR /`, `EXPOSE 53 53/udp`, `ENTRYPOINT ["/coredns"]`. The distroless part here: its users
    # and groups (nonroot is 65532), nsswitch.conf, /tmp and /home/nonroot; no shell, as upstream.
    D=$(stage rootfs-distroless)
    mkdir -p "$D/etc" "$D/tmp" "$D/root" "$D/home/nonroot"
    chmod 1777 "$D/tmp"
    chmod 700 "$D/root" "$D/home/nonroot"
    chown 65532:65532 "$D/home/nonroot"
    install -m 644 "$HERE"/rootfs/distroless/etc/{passwd,group,nsswitch.conf} "$D/etc/"
    mklayer "$D" distroless
    newimg coredns distroless coredns
    cfg coredns --config.entrypoint /coredns --config.user nonroot:nonroot --config.workingdir / \
        --config.exposedports 53/tcp --config.exposedports 53/udp

    # glibc-dns-testing: upstream is Debian with dnsutils and /coredns; here the busybox base (its
    # `hostname -f` answers from the pod's /etc/hosts as glibc's nss files does: the hostname-override
    # specs) with the dnsutils and coredns layers.
    newimg glibc-dns-testing busybox dnsutils coredns
    cfg glibc-dns-testing --config.cmd sh --config.label berth.test.image=glibc-dns-testing
    # nonroot: USER 1234 on a base image
    newimg nonroot busybox
    cfg nonroot --config.cmd sh --config.user 1234

    # pause: registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9 are one image (critest checks that
    # one image under two registries has one ID); the sandbox tags are the same program under another
    # config, hence another image ID, so critest's removal of pause:3.9 leaves sandbox images alone.
    P=$(stage rootfs-pause)
    install -m 755 "$WORK/bin/pause" "$P/pause"
    mklayer "$P" pause
    newimg pause pause
    cfg pause --config.entrypoint /pause --config.user 65535:65535
    newimg sandbox pause
    cfg sandbox --config.entrypoint /pause --config.user 65535:65535 --config.label berth.test.image=sandbox

    # critest's test-image-*: busybox plus one empty file named after the image
    onefile() { # TAG FILENAME
        D=$(stage "f-$2")
        : >"$D/$2"
        chmod 644 "$D/$2"
        mklayer "$D" "file-$2"
        newimg "$1" busybox "file-$2"
        cfg "$1" --config.cmd sh
    }
    for n in test-image-1 test-image-2 test-image-3 test-image-latest test-image-digest; do onefile $n $n; done
    onefile tags same-image
    onefile tag-test test
    onefile tag-all all

    # critest's test-image-user-*: busybox with a USER
    for spec in test-image-user-uid=1002 test-image-user-username=www-data \
        test-image-user-uid-group=1003:1004 test-image-user-username-group=www-data:1004; do
        name=${spec%%=*} user=${spec#*=}
        newimg "$name" busybox
        cfg "$name" --config.cmd sh --config.user "$user"
    done

    # critest's test-image-predefined-group: user 1000 in group 50000, both defined in the image
    G=$(stage rootfs-predefined-group)
    mkdir -p "$G/etc" "$G/home/default-user"
    cp "$R/etc/passwd" "$R/etc/group" "$R/etc/shadow" "$G/etc/"
    echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$G/etc/passwd"
    echo 'default-user:!:20000:0:99999:7:::' >>"$G/etc/shadow"
    echo 'default-user:x:1000:' >>"$G/etc/group"
    echo 'group-defined-in-image:x:50000:default-user' >>"$G/etc/group"
    chown 1000:1000 "$G/home/default-user"
    mklayer "$G" predefined-group
    newimg predefined-group busybox predefined-group
    cfg predefined-group --config.cmd sh --config.user 1000

    # nonewprivs: setuid-root nnp printing the effective uid
    N=$(stage rootfs-nonewprivs)
    mkdir -p "$N/usr/local/bin"
    install -m 4755 -o 0 -g 0 "$WORK/bin/nnp" "$N/usr/local/bin/nnp"
    mklayer "$N" nonewprivs
    newimg nonewprivs busybox nonewprivs
    cfg nonewprivs --config.cmd nnp

    # nginx look-alikes: src/nginx.c as the master, busybox httpd as its worker
    mknginx() { # TAG PORT
        T=$(stage "rootfs-$1")
        mkdir -p "$T/usr/sbin" "$T/usr/share/nginx/html" "$T/etc/nginx" "$T/var/log/nginx" "$T/var/cache/nginx"
        install -m 755 "$WORK/bin/nginx" "$T/usr/sbin/nginx"
        echo '<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>' \
            >"$T/usr/share/nginx/html/index.html"
        echo "# nginx look-alike (berth test image): busybox httpd on \$NGINX_PORT, here $2" >"$T/etc/nginx/nginx.conf"
        cp "$R/etc/passwd" "$R/etc/group" "$T/etc/"
        echo 'nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin' >>"$T/etc/passwd"
        echo 'nginx:x:101:nginx' >>"$T/etc/group"
        chmod 644 "$T/etc/passwd" "$T/etc/group" "$T/usr/share/nginx/html/index.html" "$T/etc/nginx/nginx.conf"
        mklayer "$T" "$1"
        newimg "$1" busybox "$1"
        cfg "$1" --config.env "NGINX_PORT=$2" --config.cmd nginx --config.cmd -g --config.cmd 'daemon off;' \
            --config.exposedports "$2/tcp" --config.stopsignal SIGTERM "${@:3}"
    }
    mknginx nginx 80
    mknginx nginx-new 80 --config.label berth.test.image=nginx-new
    mknginx hostnet-nginx 12003 # cri-tools' images/hostnet-nginx listens on 12003

    # httpd: busybox httpd on :80 behind Apache's entrypoint name
    H=$(stage rootfs-httpd)
    mkdir -p "$H/usr/local/apache2/bin" "$H/usr/local/apache2/htdocs" "$H/usr/local/apache2/logs"
    cat >"$H/usr/local/apache2/bin/httpd-foreground" <<'EOF'
#!/bin/sh
# httpd look-alike (berth test image): an Apache-like start line (critest greps the log for "httpd"),
# then busybox httpd in the foreground on :80.
echo "AH00558: httpd: Could not reliably determine the server's fully qualified domain name (look-alike: busybox httpd)" >&2
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
EOF
    chmod 755 "$H/usr/local/apache2/bin/httpd-foreground"
    echo '<html><body><h1>It works!</h1></body></html>' >"$H/usr/local/apache2/htdocs/index.html"
    chmod 644 "$H/usr/local/apache2/htdocs/index.html"
    mklayer "$H" httpd
    newimg httpd busybox httpd
    cfg httpd --config.env "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --config.env HTTPD_PREFIX=/usr/local/apache2 --config.workingdir /usr/local/apache2 \
        --config.cmd httpd-foreground --config.exposedports 80/tcp

    # agnhost: Kubernetes' own agnhost on busybox, with what its specs exec (sh, nc, wget, ip, ipcs
    # from busybox; curl as src/curl.sh over busybox wget; bash, which upstream installs from alpine,
    # as Debian's static bash: the sidecar probe specs run `/bin/bash -c`; dig and getent from the
    # dnsutils layer, /coredns from the coredns layer, as upstream), /agnhost-2, /uploads, and
    # the user 1000 in group 50000 that the supplemental-groups specs expect (Dockerfile of
    # test/images/agnhost).
    check_go_pins
    build_go "$WORK/bin/agnhost" k8s.io/kubernetes/test/images/agnhost
    k8s=$(k8s_source)
    A=$(stage rootfs-agnhost)
    mkdir -p "$A/bin" "$A/etc" "$A/uploads" "$A/usr/bin" "$A/home/user-defined-in-image"
    install -m 755 "$WORK/bin/agnhost" "$A/agnhost"
    install -m 755 /bin/bash-static "$A/bin/bash"
    ln -s agnhost "$A/agnhost-2"
    install -m 755 "$HERE/src/curl.sh" "$A/usr/bin/curl"
    install -m 644 "$k8s/test/images/agnhost/porter/localhost.crt" "$A/localhost.crt"
    install -m 600 "$k8s/test/images/agnhost/porter/localhost.key" "$A/localhost.key"
    cp "$R/etc/passwd" "$R/etc/group" "$R/etc/shadow" "$A/etc/"
    echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$A/etc/passwd"
    echo 'user-defined-in-image:!:20000:0:99999:7:::' >>"$A/etc/shadow"
    echo 'user-defined-in-image:x:1000:' >>"$A/etc/group"
    echo 'group-defined-in-image:x:50000:user-defined-in-image' >>"$A/etc/group"
    chown 1000:1000 "$A/home/user-defined-in-image"
    # /etc/os-release: upstream's is alpine:3.21's (agnhost's BASEIMAGE), and the ImageVolume
    # [Conformance] spec reads it through kitten for "Alpine Linux"; this one says what it imitates.
    printf '%s\n' 'NAME="berth look-alike"' 'ID=berth-lookalike' \
        'PRETTY_NAME="berth look-alike of an Alpine Linux based image (busybox)"' >"$A/etc/os-release"
    # fake-registry-server's content: pause:testing (upstream copies registry.k8s.io/pause:3.10.2 there
    # at build time; here the sandbox pause image), in its layout of manifests and blobs by digest.
    fake_registry "$A/var/registry/pause" sandbox testing
    mklayer "$A" agnhost
    agnhost_cfg() { # TAG flags...
        local tag=$1
        shift
        cfg "$tag" --config.entrypoint /agnhost --config.cmd pause --config.exposedports 80/tcp \
            --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 9376/tcp \
            --config.exposedports 5000/tcp "$@"
    }
    local agnhost_layers=(busybox dnsutils netcat coredns agnhost)
    newimg agnhost "${agnhost_layers[@]}"
    agnhost_cfg agnhost
    # the previous agnhost: the same program under another image ID, as rollout specs need two images
    newimg agnhost-prev "${agnhost_layers[@]}"
    agnhost_cfg agnhost-prev --config.label berth.test.image=agnhost-prev
    # kitten and nautilus: agnhost test-webserver serving one picture and data.json
    for n in kitten nautilus; do
        K=$(stage "rootfs-$n")
        install -m 644 "$k8s/test/images/$n/html/$n.jpg" "$k8s/test/images/$n/html/data.json" "$K/"
        mklayer "$K" "$n"
        newimg "$n" "${agnhost_layers[@]}" "$n"
        cfg "$n" --config.entrypoint /agnhost --config.cmd test-webserver --config.exposedports 80/tcp
    done

    # sample-apiserver and etcd: the aggregator [Conformance] spec runs the two side by side in a pod
    # (`/sample-apiserver --etcd-servers=...`, `/usr/local/bin/etcd --listen-client-urls ...`).
    build_go "$WORK/bin/sample-apiserver" k8s.io/sample-apiserver
    D=$(stage rootfs-sample-apiserver)
    install -m 755 "$WORK/bin/sample-apiserver" "$D/sample-apiserver"
    mklayer "$D" sample-apiserver
    newimg sample-apiserver busybox sample-apiserver
    cfg sample-apiserver --config.entrypoint /sample-apiserver
    build_etcd "$WORK/bin/etcd"
    D=$(stage rootfs-etcd)
    mkdir -p "$D/usr/local/bin" "$D/var/lib/etcd"
    install -m 755 "$WORK/bin/etcd" "$D/usr/local/bin/etcd"
    mklayer "$D" etcd
    newimg etcd busybox etcd
    cfg etcd --config.cmd /usr/local/bin/etcd --config.exposedports 2379/tcp --config.exposedports 2380/tcp
}

# ------------------------------------------------------------------ main
push() { # REGISTRY CREDS LAYOUT REPO:TAG...
    local reg=$1 creds=$2 layout=$3 want ltag
    shift 3
    local args=(--quiet --dest-tls-verify=false --retry-times 2)
    [ -n "$creds" ] && args+=(--dest-creds "$creds")
    for want in "$@"; do
        ltag=$(awk -v r="$want" '$2 == r { print $1 }' <<<"$PUSHES")
        [ -n "$ltag" ] || die "$want is not an image build.sh makes (see build.sh --list)"
        skopeo copy "${args[@]}" "oci:$layout:$ltag" "docker://$reg/$want"
    done
}

creds=
case "${1:-}" in
--key)
    image_key
    exit 0
    ;;
--list)
    awk 'NF { print $2 }' <<<"$PUSHES"
    exit 0
    ;;
--creds)
    creds=${2:?--creds USER:PASS}
    shift 2
    ;;
esac
REG=${1:?usage: build.sh [--creds USER:PASS] REGISTRY [REPO:TAG...] | --key | --list}
shift

need_packages
key=$(image_key)
LAYOUT=$CACHE/layouts/$key/oci
mkdir -p "$CACHE/layouts"
exec 9>"$CACHE/build.lock"
flock 9 # a second build.sh waits here, then finds the layout built
if [ ! -f "$CACHE/layouts/$key/done" ]; then
    say "building the test images ($key) into $CACHE/layouts/$key"
    rm -rf "$CACHE/layouts/$key"
    mkdir -p "$CACHE/layouts/$key"
    WORK=$(mktemp -d /tmp/berth-images.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    TIMEFORMAT="build.sh: built the images in %0Rs (cpu %0Us user, %0Ss sys)"
    time build_images
    umoci gc --layout "$LAYOUT"
    touch "$CACHE/layouts/$key/done"
    # Only the current definitions' images are kept.
    find "$CACHE/layouts" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
fi
flock -u 9

if [ $# -eq 0 ]; then
    # shellcheck disable=SC2046 # one word per image
    set -- $(awk 'NF { print $2 }' <<<"$PUSHES")
fi
push "$REG" "$creds" "$LAYOUT" "$@"
say "pushed $# images to $REG"
