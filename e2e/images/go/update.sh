#!/usr/bin/env bash
# Writes this Go glue module's go.mod and go.sum from tools/versions: the programs inside the test
# images that come from Kubernetes' own tree (agnhost), at the pinned Kubernetes version. Run it after
# changing KUBERNETES in tools/versions, check that e2e/images/build.sh still builds, and commit
# go.mod and go.sum. It needs the Go module proxy; build.sh then needs nothing but what go.sum pins.
# Like tools/go/update.sh it never bumps anything: each module is taken at the version
# k8s.io/kubernetes itself requires (minimal version selection from the one pinned module).
set -euo pipefail

cd "$(dirname "$0")"
# shellcheck source=tools/versions
. ../../../tools/versions

export GOFLAGS=-mod=mod GOWORK=off
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH=/usr/local/go/bin:$PATH
fi

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging/src/...;
# they are published as k8s.io/<name> tagged v0.X.Y for v1.X.Y, so the glue replaces each with that tag.
k8s_mod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
go_version=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$k8s_mod")
rm -f go.mod go.sum
go mod init berth.local/e2e/images >/dev/null 2>&1
go mod edit -go="$go_version"
sed -n 's|^\t\(k8s.io/[^ ]*\) => \./staging/.*|\1|p' "$k8s_mod" | while read -r m; do
    go mod edit -replace="$m=$m@$KUBERNETES_STAGING"
done
go mod edit -require="k8s.io/kubernetes@$KUBERNETES" -require="k8s.io/sample-apiserver@$KUBERNETES_STAGING" \
    -tool=k8s.io/kubernetes/test/images/agnhost -tool=k8s.io/sample-apiserver
go mod tidy
echo "update.sh: e2e/images/go pins k8s.io/kubernetes $KUBERNETES; now run e2e/images/build.sh and commit go.mod and go.sum"
