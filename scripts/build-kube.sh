#!/usr/bin/env bash
# Usage: scripts/build-kube.sh DEST_DIR
#
# Builds tools/kube (etcd + kube-apiserver + kube-controller-manager + kube-scheduler from the
# Kubernetes Go modules, one multi-call binary) into DEST_DIR/fedcare-kube. The first build
# compiles about 2,400 packages: 25-35 minutes on 2 cores; Go's build and module caches make
# later builds take seconds. Progress is printed every 100 packages.
set -euo pipefail
die() { echo "build-kube: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 DEST_DIR"
DEST=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v go >/dev/null || die "Go is not installed (need Go >= 1.24; on Debian: apt-get install golang, or the official tarball). The emulator tier runs without it."
KUBE=$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$ROOT/tools/kube/go.mod")
[[ -n $KUBE ]] || die "tools/kube/go.mod pins no k8s.io/kubernetes version"
mkdir -p "$DEST"
OUT=$(cd "$DEST" && pwd)/fedcare-kube
echo "build-kube: building Kubernetes $KUBE control plane into $OUT ($(go version | cut -d' ' -f3); first build 25-35 min on 2 cores, then cached)"
START=$(date +%s)
cd "$ROOT/tools/kube"
# -v names each package as it is compiled (only those not in the build cache): count them.
set +e
MINOR=$(echo "$KUBE" | cut -d. -f2)
# The version the API server reports (kubectl and helm parse it): what the release binaries stamp.
LDFLAGS="-s -w -X main.kubeVersion=$KUBE"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$KUBE -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean"
done
go build -v -ldflags "$LDFLAGS" -o "$OUT.tmp" . 2>&1 | awk -v start="$START" '
  /^#|\.go:[0-9]+|^go: / { print "build-kube: " $0; fflush(); next }
  { n++; if (n % 100 == 0) { printf "build-kube: %d packages compiled (%ds)\n", n, systime() - start; fflush() } }
  END { printf "build-kube: %d packages compiled\n", n }'
STATUS=${PIPESTATUS[0]}
set -e
if [[ $STATUS -ne 0 ]]; then
  rm -f "$OUT.tmp"
  die "go build failed (exit $STATUS; messages above). A module download failure means the Go module proxy is unreachable (go env GOPROXY)."
fi
mv "$OUT.tmp" "$OUT"
echo "build-kube: done in $(( $(date +%s) - START ))s: $("$OUT" version)"
