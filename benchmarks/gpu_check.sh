#!/usr/bin/env bash
# One short GPU check of fm_torch (under 8 minutes on one GPU); prints a table.
#
#   bash benchmarks/gpu_check.sh          # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu    # smoke test of this script on a CPU (toy sizes)
#
# 1. finds a python whose torch sees CUDA ($PYTHON, .venv/bin/python, python3, python);
#    without one it tries the Makefile's torch pin in .venv-gpu (needs a package index)
#    and otherwise stops with one line saying what is missing;
# 2. benchmarks/gpu_check.py: training images/s (fp32, bf16, bf16 + torch.compile),
#    guided sampling images/s (fp32, bf16, bf16 + compile with CUDA graphs), and the
#    projected time of the README's full MNIST training;
# 3. a one-GPU `torchrun` run of `fm-torch train` (DDP with NCCL; gloo with --cpu),
#    resumed once, timed.
# The repo is used in place (PYTHONPATH), nothing is installed when torch is there.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
MODE=cuda
case "${1:-}" in
  --cpu|--dry-run) MODE=cpu ;;
  "") ;;
  *) echo "gpu_check: error: unknown argument ${1} (use --cpu for a CPU smoke test)" >&2; exit 2 ;;
esac
OUT=runs/gpu_check
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg

want='import sys, torch; sys.exit(0 if (sys.argv[1] == "cpu" or torch.cuda.is_available()) else 3)'
PY=""
for cand in "${PYTHON:-}" .venv/bin/python .venv-gpu/bin/python python3 python; do
  [ -n "$cand" ] || continue
  command -v "$cand" >/dev/null 2>&1 || continue
  if "$cand" -c "$want" "$MODE" >/dev/null 2>&1; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then
  pin=$(sed -n 's/^TORCH_PIN := //p' Makefile)
  echo "gpu_check: no python with a CUDA torch found; trying pip install $pin into .venv-gpu" >&2
  python3 -m venv --system-site-packages .venv-gpu >/dev/null 2>&1 &&
    timeout 300 .venv-gpu/bin/python -m pip install -q "$pin" torchdiffeq tqdm >/dev/null 2>&1
  if .venv-gpu/bin/python -c "$want" "$MODE" >/dev/null 2>&1; then
    PY=.venv-gpu/bin/python
  else
    echo "gpu_check: error: no torch with CUDA here, and pip install $pin failed (no package" \
         "index?); install torch with CUDA, or set PYTHON=/path/to/python" >&2
    exit 2
  fi
fi
missing=$("$PY" -c '
import importlib.util as u
print(" ".join(m for m in ("numpy", "scipy", "torchdiffeq", "tqdm") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  "$PY" -m pip install -q $missing >/dev/null 2>&1 || {
    echo "gpu_check: error: $PY lacks $missing and pip cannot install them" >&2; exit 2; }
fi
echo "gpu_check: python $PY ($("$PY" -c 'import torch; print("torch", torch.__version__,
  "CUDA", torch.version.cuda)')), mode $MODE"
start=$(date +%s)

# 2. images/s (the table)
args=(); [ "$MODE" = cpu ] && args=(--cpu)
timeout 420 "$PY" -m benchmarks.gpu_check "${args[@]}" --out "$OUT" | tee "$OUT/table.md"
rc_table=${PIPESTATUS[0]}

# 3. one-GPU torchrun: train, then resume to more steps (rank 0 writes)
run="$OUT/torchrun"
rm -rf "$run"
if [ "$MODE" = cpu ]; then
  targs=(--data 8gaussians --hidden 16 --depth 2 --batch 32 --device cpu)
  s1=10; s2=20
else
  targs=(--data 8gaussians --hidden 256 --depth 3 --batch 4096 --device cuda --bf16)
  s1=300; s2=600
fi
t0=$(date +%s.%N)
timeout 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m fm_torch.cli \
  train "${targs[@]}" --steps $s1 --ckpt-every 100 --sample-every 100000 --no-progress \
  --out "$run" > "$OUT/torchrun.log" 2>&1 &&
timeout 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m fm_torch.cli \
  train "${targs[@]}" --steps $s2 --ckpt-every 100 --sample-every 100000 --no-progress \
  --resume --out "$run" >> "$OUT/torchrun.log" 2>&1
rc_run=$?
t1=$(date +%s.%N)
if [ $rc_run -eq 0 ]; then
  last=$(tail -n 1 "$run/loss.csv")
  echo "| torchrun, 1 process: $s1 steps + resume to $s2 (${targs[*]}) | ok in" \
       "$("$PY" -c "print(f'{$t1 - $t0:.1f}')") s | last loss.csv row: $last |"
else
  echo "| torchrun, 1 process | FAILED (exit $rc_run), see $OUT/torchrun.log |"
  tail -n 5 "$OUT/torchrun.log"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s; table in $OUT/table.md"
[ "$rc_table" -eq 0 ] && [ "$rc_run" -eq 0 ]
