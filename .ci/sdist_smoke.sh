#!/usr/bin/env bash
# CI: rankdistill as a user gets it from its sdist. Builds the sdist (in an
# isolated build environment, as a release would: no torch there), creates a
# FRESH virtual environment, installs the CPU-only torch==2.13.0 (another torch
# than `make test`'s), installs the sdist without build isolation with the
# [plot] extra (so the runtime dependencies come from the package's metadata),
# then, from a directory outside the repository, runs each op once,
# `rankdistill --version` and a 2-epoch `rankdistill demo`. It also checks the
# two messages a user meets: a plain `pip install SDIST` (isolated: no torch
# visible) and `python -m rankdistill` run from the repository root, where the
# source folder shadows the installed package.
#
#   bash .ci/sdist_smoke.sh               # KEEP=1 keeps the temporary folder
#   PYTHON=python3.12 SMOKE_TORCH=torch==2.14.1 bash .ci/sdist_smoke.sh
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SMOKE_TORCH="${SMOKE_TORCH:-torch==2.13.0}"
# This step builds against a CPU-only torch, whatever .ci/run forces for make test.
unset RANKDISTILL_WITH_CUDA PYTHONPATH
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/rankdistill-sdist-smoke.XXXXXX")"
if [[ "${KEEP:-0}" == 1 ]]; then
    trap 'echo "[sdist-smoke] kept $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
log() { printf '[sdist-smoke +%3ss] %s\n' "$SECONDS" "$*"; }
fail() { printf '[sdist-smoke +%3ss] FAILED: %s\n' "$SECONDS" "$*" >&2; exit 1; }
# Runs a command quietly into a log file; on failure shows the log's end.
quiet() {
    local name="$1"; shift
    if ! "$@" >"$WORK/$name.log" 2>&1; then
        tail -n 60 "$WORK/$name.log" >&2
        fail "$name: $*"
    fi
}

VENV="$WORK/venv"
PY="$VENV/bin/python"
log "fresh virtual environment $VENV ($("$PYTHON" --version 2>&1), $PYTHON)"
quiet venv "$PYTHON" -m venv "$VENV"
quiet tools "$PY" -m pip install build

log "building the sdist: python -m build --sdist (isolated build environment, no torch in it)"
quiet sdist "$PY" -m build --sdist --outdir "$WORK/dist" "$REPO"
SDIST="$(ls "$WORK"/dist/rankdistill-*.tar.gz)"
tar -tzf "$SDIST" | sed 's,^[^/]*/,,' | sort >"$WORK/sdist-files.txt"
log "sdist: $(basename "$SDIST"), $(du -k "$SDIST" | cut -f1) KiB, $(wc -l <"$WORK/sdist-files.txt") entries"
(cd "$REPO" && git ls-files csrc LICENSE README.md pyproject.toml setup.py MANIFEST.in rankdistill) | sort >"$WORK/needed.txt"
missing="$(comm -23 "$WORK/needed.txt" "$WORK/sdist-files.txt")"
[[ -z "$missing" ]] || fail "the sdist lacks: $missing"
! grep -E '\.(so|o|pyc)$' "$WORK/sdist-files.txt" || fail "the sdist holds built files (above)"
log "sdist holds every tracked source of csrc/ and rankdistill/, LICENSE, README.md, and no built file"

log "installing $SMOKE_TORCH and the build tools (setuptools>=77, wheel, ninja)"
quiet torch "$PY" -m pip install "$SMOKE_TORCH" "setuptools>=77" wheel ninja
TORCH_VERSION="$("$PY" -W ignore -c 'import torch; print(torch.__version__)')"
log "torch $TORCH_VERSION (CUDA: $("$PY" -W ignore -c 'import torch; print(torch.version.cuda)'))"

log "pip install SDIST with build isolation must stop and say --no-build-isolation"
if "$PY" -m pip install --no-deps "$SDIST" >"$WORK/isolated.log" 2>&1; then
    fail "an isolated build succeeded: it cannot have compiled against the installed torch"
fi
grep -q "isolated build environment" "$WORK/isolated.log" && grep -q -- "--no-build-isolation" "$WORK/isolated.log" \
    || { tail -n 40 "$WORK/isolated.log" >&2; fail "the isolated build's message does not explain isolation"; }
sed -n '/^ *rankdistill compiles/,/--no-build-isolation rankdistill/p' "$WORK/isolated.log" \
    | sed 's/^ */  it says: /'

log "pip install --no-build-isolation '$(basename "$SDIST")[plot]' (MAX_JOBS=$MAX_JOBS)"
start=$SECONDS
quiet install bash -c "cd '$WORK' && '$PY' -m pip install -v --no-build-isolation '$SDIST[plot]'"
log "  built and installed in $((SECONDS - start)) s: $(grep -m1 -o 'rankdistill: building.*' "$WORK/install.log" || echo '?')"
log "  $("$PY" -m pip list 2>/dev/null | grep -E -i '^(rankdistill|torch|numpy|scipy|tqdm|filelock|matplotlib) ' | tr -s ' ' | paste -sd, -)"

RUN="$WORK/elsewhere"
mkdir -p "$RUN"
cd "$RUN"
log "from $RUN: import rankdistill and run each op once"
"$PY" - <<'EOF'
import pathlib

import torch

import rankdistill
from rankdistill import discrepancy_sample, ops, rank_positions, relaxed_listmle, weighted_sample

where = pathlib.Path(rankdistill.__file__).parent
assert "site-packages" in where.parts, f"rankdistill imported from {where}, not the installed package"
print(f"  rankdistill {rankdistill.__version__} from {where}; torch {torch.__version__}; "
      f"_C: {rankdistill._C.build_info.strip()}")
g = torch.Generator().manual_seed(0)
scores = torch.randn(4, 50, generator=g)
ranks = rank_positions(scores, torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]))
assert ranks.shape == (4, 2) and bool(((ranks >= 0) & (ranks < 50)).all())
picked = weighted_sample(torch.rand(4, 50, generator=g), 5, generator=g)
assert picked.shape == (4, 5) and all(len(set(row.tolist())) == 5 for row in picked)
student_rank = rank_positions(scores, torch.arange(20).expand(4, 20))
teacher_rank = torch.arange(20).expand(4, 20)
dcd = discrepancy_sample(student_rank, teacher_rank, 5, mu=0.1, direction="under", generator=g)
assert dcd.shape == (4, 5)
ranked = torch.randn(4, 10, requires_grad=True)
loss = relaxed_listmle(ranked, torch.randn(4, 20))
loss.backward()
assert loss.ndim == 0 and torch.isfinite(loss) and ranked.grad is not None
users, items = torch.randn(4, 8, generator=g), torch.randn(50, 8, generator=g)
best = ops.dot_top_columns(users, items, 10)
assert torch.equal(best, (users @ items.T).topk(10, dim=1).indices)
assert torch.equal(ops.dot_rank_positions(users, items, best), torch.arange(10).expand(4, 10))
print(f"  rank_positions, dot_rank_positions, dot_top_columns, weighted_sample, discrepancy_sample, "
      f"relaxed_listmle: ok (loss {loss.item():.4f})")
EOF

version="$("$VENV/bin/rankdistill" --version)"
expected="rankdistill $(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/rankdistill/__init__.py")"
[[ "$version" == "$expected" ]] || fail "rankdistill --version said '$version', expected '$expected'"
log "rankdistill --version: $version"
# the recipes are package data: an install without them would offer no --recipe
teacher_help="$("$VENV/bin/rankdistill" teacher --help)"
[[ "$teacher_help" == *"--recipe {papers}"* ]] || fail "rankdistill teacher has no --recipe papers"
log "rankdistill teacher --recipe papers: offered"

log "rankdistill demo --epochs 2 --out $RUN/demo --no-progress"
start=$SECONDS
"$VENV/bin/rankdistill" demo --epochs 2 --out "$RUN/demo" --no-progress 2>&1 | sed 's/^/  | /'
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "rankdistill demo"
for role in teacher student; do
    [[ -n "$(find "$RUN/demo/$role" -name results.json 2>/dev/null)" ]] || fail "the demo saved no $role results"
done
log "  demo done in $((SECONDS - start)) s"

# A source folder shadows the installed package when run from: it must say so
# (before: "cannot import name '_C' from partially initialized module").
shadowed() {  # FOLDER EXPECTED-REGEX
    cd "$1"
    if "$PY" -m rankdistill --version >"$WORK/shadow.log" 2>&1; then
        fail "the source folder $1 imported: $(cat "$WORK/shadow.log")"
    fi
    message="$(grep -m1 -E "^ImportError: ($2)" "$WORK/shadow.log")" \
        || { cat "$WORK/shadow.log" >&2; fail "no clear message from the source folder $1"; }
    log "  $message"
}
mkdir "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
UNPACKED="$(ls -d "$WORK"/unpacked/rankdistill-*)"
log "from the unpacked sdist (a source folder, no extension built): python -m rankdistill --version must say it shadows"
shadowed "$UNPACKED" "rankdistill.s source folder .* shadows the installed rankdistill \\($VENV/lib/"
# In the checkout: the same message without a built extension; with one (CI
# built it for make test, against torch 2.14.1): the torch-mismatch message.
log "from the repository root: the same, or the extension built there is for another torch"
shadowed "$REPO" "rankdistill.s source folder .* shadows the installed rankdistill|rankdistill was built against torch .* and this is torch ${TORCH_VERSION//+/\\+}:"

log "passed in $SECONDS s"
