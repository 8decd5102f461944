#!/usr/bin/env bash
# deploy/build.sh — berth's release artefacts: statically linked binaries that run on any x86_64
# Linux node, and the DaemonSet image (Dockerfile) that carries them with the installer.
#
#   deploy/build.sh binaries              build berthd, berth-shim, berthctl, berth-pause, berth-install
#                                         (Cargo.toml's dist profile: release with fat LTO; glibc with
#                                         crt-static) into target/static; print the dir
#   deploy/build.sh image [TAG]           the binaries, then the image berth:TAG (default: the crate version)
#                                         with Debian's buildah, offline (FROM scratch), written as an OCI
#                                         archive; print the archive's path
#   deploy/build.sh push REGISTRY [TAG]   the image, pushed to REGISTRY/berth:TAG over plain HTTP (e.g. the
#                                         project's registry, `e2e/images/registry.sh start` → 127.0.0.1:5100)
#
# The static build uses its own target dir (target/static), so it never fights the debug builds.
# Progress goes to stderr; the one result goes to stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
out=$repo/target/static
bins=(berthd berth-shim berthctl berth-pause berth-install)
say() { echo "build.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

version() { sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1; }

binaries() {
    local args=() b
    for b in "${bins[@]}"; do args+=(--bin "$b"); done
    say "building ${bins[*]} (dist profile, static)"
    # Only the target's artefacts are static: build scripts and proc macros (host) stay dynamic.
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$out \
        nice -n 10 cargo build --manifest-path "$repo/Cargo.toml" --profile dist --locked --target "$target" "${args[@]}" >&2
    local dir=$out/$target/dist
    for b in "${bins[@]}"; do
        # A dynamic executable has a program interpreter (PT_INTERP); a static one has none.
        if readelf -lW "$dir/$b" | grep -q 'INTERP'; then
            die "$dir/$b is dynamically linked"
        fi
    done
    echo "$dir"
}

image() {
    local tag=${1:-$(version)} dir ctx archive
    dir=$(binaries)
    command -v buildah >/dev/null || {
        say "installing buildah"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
    }
    ctx=$out/image-context
    rm -rf "$ctx"
    mkdir -p "$ctx/bin" "$ctx/etc"
    for b in "${bins[@]}"; do cp "$dir/$b" "$ctx/bin/"; done
    "$dir/berthd" config default >"$ctx/etc/config.toml"
    cp "$repo/cni/10-berth.conflist" "$ctx/etc/"
    say "building the image berth:$tag"
    buildah bud --quiet --pull=never --layers=false -f "$repo/Dockerfile" -t "localhost/berth:$tag" "$ctx" >&2
    archive=$out/berth-$tag.oci.tar
    rm -f "$archive"
    buildah push --quiet "localhost/berth:$tag" "oci-archive:$archive:berth:$tag" >&2
    say "image size: $(du -h "$archive" | cut -f1) (archive), binaries $(du -ch "$ctx"/bin/* | tail -n1 | cut -f1)"
    echo "$archive"
}

push() {
    local registry=${1:?usage: deploy/build.sh push REGISTRY [TAG]} tag=${2:-$(version)} archive
    archive=$(image "$tag")
    say "pushing $registry/berth:$tag"
    buildah push --quiet --tls-verify=false "localhost/berth:$tag" "docker://$registry/berth:$tag" >&2
    echo "$registry/berth:$tag"
}

case ${1:-} in
binaries) binaries ;;
image) image "${2:-}" ;;
push) push "${2:-}" "${3:-}" ;;
*) die "usage: deploy/build.sh binaries | image [TAG] | push REGISTRY [TAG]" ;;
esac
