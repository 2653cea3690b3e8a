#!/usr/bin/env bash
# The measurements of docs/scaleout.md: `cic-fast loadtest` against the TCP server and
# against Ray Serve (1 and 2 replicas, batching off and on), at 1/4/16/64 devices.
#
#   bash benches/scaleout.sh [OUT_DIR] [DURATION_S]
#   INPUT_DTYPE=float32 DEVICES="16" bash benches/scaleout.sh /tmp/fp32 15
#
# Needs the `ray` extra (pip install ".[ray]"). Every server is started, waited for
# (bounded) and stopped here; each load runs DURATION_S seconds (default 15).
# INPUT_DTYPE: uint8 (default: a camera frame, 150 KB per server-only request, the
# model's preprocessing in the traced graph) or float32 (602 KB); DEVICES: the
# device counts (default "1 4 16 64").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/cic-scaleout}
DUR=${2:-15}
mkdir -p "$OUT"
# seeded weights: servers and devices must hold the same model (the fingerprint)
python -c "import torch, torchvision; torch.manual_seed(0); \
torch.save(torchvision.models.resnet18().state_dict(), '$OUT/resnet18.pt')"
MODEL=(torchvision:resnet18 --weights "$OUT/resnet18.pt" --input-shape 1,3,224,224
       --input-dtype "${INPUT_DTYPE:-uint8}")
read -r -a DEVICES <<<"${DEVICES:-1 4 16 64}"
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0

start() {  # start a server (args: name, flags...); sets ADDR and PID
  local name=$1; shift
  python -m cic_fast serve "${MODEL[@]}" --threads 1 "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  PID=$!
  for _ in $(seq 600); do  # at most 300 s
    if grep -q "^listening on " "$OUT/$name.out"; then
      ADDR=$(grep "^listening on " "$OUT/$name.out" | head -1 | awk '{print $3}')
      return 0
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/$name.err"; return 1; }
    sleep 0.5
  done
  echo "server $name did not start"; kill "$PID"; return 1
}

stop() {
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 120); do kill -0 "$PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$PID" 2>/dev/null || true
}

load() {  # run the load at each device count (args: name)
  local name=$1
  for n in "${DEVICES[@]}"; do
    python -m cic_fast loadtest "${MODEL[@]}" --address "$ADDR" --devices "$n" \
      --duration-s "$DUR" --quiet --json "$OUT/$name-$n.json" | tee -a "$OUT/summary.txt"
  done
}

rm -f "$OUT"/*.json
{ echo "input dtype ${INPUT_DTYPE:-uint8}; load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"; } >"$OUT/summary.txt"
start tcp --port 0 && load tcp; stop
for replicas in 1 2; do
  for batch in 1 8; do
    name="ray-r$replicas-b$batch"
    start "$name" --backend ray --port 0 --replicas "$replicas" --max-batch "$batch" \
      --batch-wait-ms 10 --ray-cpus 2 && load "$name"
    stop
  done
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'server':<12} {'devices':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
for f in sorted(out.glob("*.json"), key=lambda p: (p.stem.rsplit("-", 1)[0], int(p.stem.rsplit("-", 1)[1]))):
    r = json.loads(f.read_text())
    name = f.stem.rsplit("-", 1)[0]
    print(f"{name:<12} {r['devices']:>7} {r['rps']:>7.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}"
          f" {r['p99_ms']:>8.1f}  {r['errors'] or ''}")
PY
