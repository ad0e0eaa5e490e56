#!/usr/bin/env bash
# GPU readiness in one command (about 10 minutes on a CUDA GPU); prints one table at the end.
#   1. the device-sensitive tests (pytest -m device: tests/test_device.py) on the device
#   2. `make bench`: bench/speed.py and bench/memory.py with their defaults (peers from
#      bench/requirements.txt), writing to the work folder, not over bench/results/
#   3. 1000 meta-iterations of the paper profile's omniglot-5w1s MAML (`metalearn train`, full Omniglot
#      from $METALEARN_DATA_MIRROR), then `metalearn evaluate` on its 600 test episodes
#
#   bench/gpu_check.sh                      # --device cuda
#   bench/gpu_check.sh --device cuda:1      # or CUDA_VISIBLE_DEVICES=1 bench/gpu_check.sh
#   bench/gpu_check.sh --device cpu         # the same steps on the CPU, GPUs hidden (CUDA_VISIBLE_DEVICES=)
# Options (defaults): --iterations 1000  --episodes 600  --dataset omniglot (or omniglot-small)
#   --bench full|quick (quick: one timed block of MAML on the sinusoid, memory at 1 step)
#   --work DIR (a new temporary folder)  --skip-tests (step 1 left out)
# tests/test_device.py runs `--device cpu --iterations 2 --episodes 5 --dataset omniglot-small --bench quick
# --skip-tests` (the suite runs the device tests itself).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEVICE=cuda ITERATIONS=1000 EPISODES=600 DATASET=omniglot BENCH=full WORK="" TESTS=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --episodes) EPISODES="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --bench) BENCH="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --skip-tests) TESTS=no; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
METALEARN="$(dirname "$PY")/metalearn"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's code, installed or not
WORK="${WORK:-$(mktemp -d -t metalearn-gpu-check.XXXXXX)}"
mkdir -p "$WORK"
export METALEARN_DATA_MIRROR="${METALEARN_DATA_MIRROR:-$(cd "$ROOT/.." && pwd)/shared/data/omniglot}"

case "$DEVICE" in
  cpu) export CUDA_VISIBLE_DEVICES="" ;;   # also for bench/, which takes CUDA whenever it sees one
  cuda|cuda:*) "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
                 || { echo "gpu_check.sh: no CUDA device visible to torch (--device cpu runs on the CPU)" >&2; exit 1; } ;;
  *) echo "gpu_check.sh: --device cpu, cuda or cuda:N" >&2; exit 2 ;;
esac
ROWS="$WORK/rows.tsv"
: > "$ROWS"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ROWS"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
failed=0

echo "== 1. device-sensitive tests on $DEVICE =="
t=$(now)
if [ "$TESTS" = no ]; then
  row "device tests (pytest -m device)" "skipped (--skip-tests)" ""
elif METALEARN_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m device -p no:cacheprovider tests 2>&1 | tee "$WORK/tests.log"; then
  row "device tests (pytest -m device)" "$(tail -1 "$WORK/tests.log" | sed 's/=//g; s/^ *//; s/ *$//')" "$(since "$t")"
else
  failed=1; row "device tests (pytest -m device)" "FAILED: $(tail -1 "$WORK/tests.log" | sed 's/=//g')" "$(since "$t")"
fi

echo "== 2. make bench (speed, memory) =="
t=$(now)
if [ "$BENCH" = full ]; then
  "$PY" -m pip install --quiet -r bench/requirements.txt 2>&1 | grep -v "is ignored" || true
  SPEED=(--control-threads 0) MEMORY=()  # (control rows: a CPU question, bench/speed.py)
else
  SPEED=(--impls ours plain --benchmarks sinusoid-10shot --algorithms --iterations 1 --repeats 1 --eval-episodes 0
         --control-threads 0)
  MEMORY=(--algorithms maml --steps 1 --repeats 1)
fi
"$PY" -m bench.speed "${SPEED[@]}" --out "$WORK/speed.csv" 2>&1 | tee "$WORK/speed.log"
row "bench/speed.py" "$(grep -c . "$WORK/speed.csv") rows -> $WORK/speed.csv" "$(since "$t")"
awk -F, 'NR > 1 && $2 == "maml" { printf "  speed %s maml %s\t%s it/s, peak %s MB\t\n", $1, $3, $4, $5 }' \
  "$WORK/speed.csv" >> "$ROWS"
t=$(now)
"$PY" -m bench.memory "${MEMORY[@]}" --out "$WORK/memory.csv" 2>&1 | tee "$WORK/memory.log"
row "bench/memory.py" "$(grep -c . "$WORK/memory.csv") rows -> $WORK/memory.csv" "$(since "$t")"
awk -F, 'NR > 1 { printf "  memory %s, %s inner steps\t%s MB, %s s/meta-step\t\n", $1, $2, $3, $4 }' "$WORK/memory.csv" >> "$ROWS"

echo "== 3. paper profile: omniglot-5w1s MAML, $ITERATIONS meta-iterations on $DEVICE =="
"$PY" - "$WORK" "$ITERATIONS" "$EPISODES" "$DATASET" <<'EOF'
import sys
import yaml
work, iterations, episodes, dataset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
params = yaml.safe_load(open("params.yaml"))
params["data"]["root"] = f"{work}/data"
bench = params["profiles"]["paper"]["benchmarks"]["omniglot-5w1s"]
bench["dataset"] = dataset
bench["test_tasks"] = episodes
bench["train"] = {**bench.get("train", {}), "iterations": iterations, "checkpoint_every": iterations,
                  "log_every": max(1, iterations // 10)}
yaml.safe_dump(params, open(f"{work}/params.yaml", "w"), sort_keys=False)
EOF
ML=("$METALEARN")
ARGS=(--params "$WORK/params.yaml" --profile paper)
t=$(now)
"${ML[@]}" download "${ARGS[@]}" --dataset "$DATASET"
"${ML[@]}" prepare "${ARGS[@]}" --dataset "$DATASET"
"${ML[@]}" split "${ARGS[@]}" -b omniglot-5w1s
row "data: $DATASET download, prepare, split" "" "$(since "$t")"
t=$(now)
"${ML[@]}" train "${ARGS[@]}" -b omniglot-5w1s -a maml --device "$DEVICE" --out "$WORK/maml"
row "train: $ITERATIONS meta-iterations" "" "$(since "$t")"
t=$(now)
"${ML[@]}" evaluate "${ARGS[@]}" --model "$WORK/maml/model.pt" --out "$WORK/maml/test.json" --device "$DEVICE"
row "evaluate: $EPISODES test episodes" "" "$(since "$t")"
"$PY" - "$WORK" "$DEVICE" >> "$ROWS" <<'EOF'
import json, sys
import torch
work, device = sys.argv[1], sys.argv[2]
history = json.load(open(f"{work}/maml/history.json"))
test = json.load(open(f"{work}/maml/test.json"))
last = history[-1]
name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
print(f"  device\t{name}, torch {torch.__version__}\t")
print(f"  meta-iterations per second (training loop)\t{last['iteration'] / last['seconds']:.2f}\t")
extra = {k: round(v, 4) for k, v in last.items() if k not in ("iteration", "seconds") and isinstance(v, float)}
print(f"  last logged iteration {last['iteration']}\t{extra}\t")
print(f"  test {test['metric']} ({test['episodes']} episodes, {test['inner_steps']} steps)\t"
      f"{test['mean']:.2f} ± {test['ci95']:.2f}\t")
EOF

echo
echo "gpu_check.sh --device $DEVICE ($(date -u +%Y-%m-%dT%H:%MZ), work: $WORK)"
{ printf '| step | result | seconds |\n|---|---|---|\n'
  awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$ROWS"; } | tee "$WORK/gpu_check.md"
exit $failed
