#!/usr/bin/env bash
# A local Flower deployment of the fedcare workloads, without Kubernetes:
# synthetic data for N sites, one flower-superlink, N flower-supernode
# processes (one per site, each told its data through --node-config), a
# `flwr run`, polling `flwr ls` until the run finishes, then the outputs.
#
#   workloads/scripts/local-deployment.sh                # 3 sites, 2 rounds, in a temp dir
#   SITES=4 ROUNDS=3 WORK=/tmp/fedcare-demo workloads/scripts/local-deployment.sh
#
# Needs the fedcare-workloads package and flwr on PATH (e.g. `. .venv/bin/activate`).
# Offline-safe: the SuperLink never installs app dependencies.
set -euo pipefail

SITES=${SITES:-3}
ROUNDS=${ROUNDS:-2}
IMAGES=${IMAGES:-200}
WORK=${WORK:-$(mktemp -d -t fedcare-local-XXXX)}
APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir -p "$WORK"
export FLWR_HOME="$WORK/flwr-home"   # FABs, CLI config and logs stay in the work dir
mkdir -p "$FLWR_HOME"
PORT=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> synthetic data for $SITES sites + held-out set in $WORK/data"
fedcare-workloads synth --out "$WORK/data" --sites "$SITES" --images-per-site "$IMAGES" --holdout 150 --image-size 64 >/dev/null

echo "==> flower-superlink on 127.0.0.1:$PORT"
flower-superlink --insecure --host 127.0.0.1 --port "$PORT" --disable-runtime-dependency-installation \
  >"$WORK/superlink.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null && break
  sleep 0.5
done

for i in $(seq 0 $((SITES - 1))); do
  site=$(ls "$WORK/data" | grep '^site-' | sed -n "$((i + 1))p")
  echo "==> flower-supernode for $site"
  flower-supernode --insecure --superlink "127.0.0.1:$PORT" --port "$(free_port)" \
    --node-config "site=\"$site\" data-path=\"$WORK/data/$site\" data-root=\"$WORK/data\"" \
    >"$WORK/$site.log" 2>&1 &
  pids+=($!)
done

# The flwr CLI finds SuperLinks by name in $FLWR_HOME/config.toml.
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:$PORT"
insecure = true
EOF

echo "==> flwr run $APP_DIR local"
RUN_JSON=$(flwr run "$APP_DIR" local --format json -c \
  "num-server-rounds=$ROUNDS min-train-nodes=$SITES min-available-nodes=$SITES fraction-evaluate=0.0 local-epochs=3 batch-size=16 out-dir=\"$WORK/out\" server-eval-path=\"$WORK/data/holdout\"")
RUN_ID=$(echo "$RUN_JSON" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); assert d["success"], d; print(d["run-id"])')
echo "    run $RUN_ID"

deadline=$((SECONDS + 900))
while :; do
  STATUS=$(flwr ls local --run-id "$RUN_ID" --format json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
  [[ $STATUS == finished* ]] && break
  if ((SECONDS > deadline)); then flwr stop "$RUN_ID" local; echo "timed out" >&2; exit 1; fi
  sleep 3
done
echo "==> $STATUS"
ls -l "$WORK/out"
"$PY" - "$WORK/out" <<'EOF'
import json, sys
card = json.load(open(f"{sys.argv[1]}/model-card.json"))
for r in card["metrics_per_round"]:
    s = r["server"] or {}
    print(f"round {r['round']}: held-out accuracy {s.get('accuracy', float('nan')):.3f} "
          f"loss {s.get('loss', float('nan')):.3f} auroc {s.get('auroc', float('nan')):.3f}")
print("model sha256", card["model"]["sha256"])
EOF
[[ $STATUS == finished:completed ]]
