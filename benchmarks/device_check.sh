#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine, so that a short lease
# covers them all: build against that machine's torch, the CUDA test cases,
# compute-sanitizer (memcheck and racecheck) on the op tests, the op
# benchmarks, and end-to-end epoch times of Student, RRD, DCD and BD on
# CiteULike. Each step's log and the tables land in $OUT (default
# ./device-out); the last lines printed are the summary.
#
#   DATA=path/to/citeulike-a/users.dat OUT=... bash benchmarks/device_check.sh
#
# The data set must travel with the working tree: copy it into a folder that
# git ignores (e.g. `.device-data/`, listed in .git/info/exclude) and carry
# that folder. DEVICE=cpu runs the end-to-end part on the CPU (to try the
# script without a GPU); SKIP_SANITIZER=1 leaves compute-sanitizer out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
DATA=${DATA:-.device-data/users.dat}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
mkdir -p "$OUT"
summary=()
step() {  # step NAME COMMAND...: run it, log it, remember how it ended
  local name=$1 start=$SECONDS
  shift
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-12s rc=%-3s %5ss  %s' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$name.log")")")
  return $rc
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
  step build "$PYTHON" -m pip install --no-build-isolation -e . || { printf '%s\n' "${summary[@]}"; exit 1; }
  step tests "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests
  if [ -z "${SKIP_SANITIZER:-}" ]; then
    ops_tests="tests/test_rank_positions.py tests/test_dot_rank_positions.py tests/test_dot_top_columns.py tests/test_dot_lists.py tests/test_sampling.py tests/test_relaxed_listmle.py"
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$PYTHON" -m pytest -q -p no:cacheprovider -x -k "cuda and not large_catalogue" $ops_tests
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 \
      "$PYTHON" -m pytest -q -p no:cacheprovider -x -k "cuda and (matches_definition or all_columns or distribution)" $ops_tests
  fi
  gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
  step bench "$PYTHON" benchmarks/bench_ops.py --device cuda --save "$OUT/$gpu.md"
fi

# End to end: a BPR teacher, then one seed of each method for a few epochs;
# compare's table gives seconds per epoch with the refreshes spread in.
if [ -f "$DATA" ]; then
  runs="$OUT/runs"
  common=(--data "$DATA" --split "$runs/split.npz" --device "$DEVICE" --no-progress)
  step teacher "$PYTHON" -m rankdistill teacher "${common[@]}" --epochs 5 --out "$runs/teacher"
  step epochs "$PYTHON" -m rankdistill compare "${common[@]}" --teacher "$runs/teacher/best.pt" \
    --methods student,rrd,dcd,de --seeds 0 --epochs 10 --out "$runs/compare"
  step bd-epochs "$PYTHON" -m rankdistill compare "${common[@]}" --teacher "$runs/teacher/best.pt" \
    --methods bd --seeds 0 --epochs 10 --dim 5 -o teacher_init=fresh -o teacher_dim=50 -o update_every=2 \
    --protocol full --metric H@50 --out "$runs/bd"
  grep -A8 "^Method" "$OUT/epochs.log" "$OUT/bd-epochs.log" > "$OUT/epoch_times.txt" 2>/dev/null
else
  summary+=("end-to-end  skipped: no data at $DATA")
fi

printf '%s\n' "${summary[@]}"
[ -f "$OUT/epoch_times.txt" ] && cat "$OUT/epoch_times.txt"
exit 0
