#!/usr/bin/env bash
# A/B of heimdall's data path between two commits, with ../shared/bench:
#   benchmarks/ab/ab.sh OLD_REV [PAIRS=3]
# OLD_REV gets its own detached worktree ../heimdall-ab-OLD_REV with its own
# .venv (the editable install of this checkout would shadow PYTHONPATH, so
# the old code cannot run from here; AB_OLD_DIR names an existing one); NEW is this checkout as it is.  Each
# pair runs the harness twice, old then new (then new first in the next pair,
# so neither always goes first), each time with aiohttp as a fixed reference
# in the same invocation: --lb aiohttp --dist-n 0 --lat-rate 0 --conns 16,64.
# AB_EXTRA adds harness options (e.g. --repeat, --duration).
# Results: benchmarks/results/<stamp>-ab/{old,new}-pN/, and a table from
# ab_report.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
old_rev=${1:?usage: ab.sh OLD_REV [PAIRS]}
pairs=${2:-3}
bench=${BENCH:-$repo/../shared/bench/run.sh}
old_dir=${AB_OLD_DIR:-$(cd "$repo/.." && pwd)/heimdall-ab-$old_rev}
if [[ ! -d $old_dir ]]; then
  git -C "$repo" worktree add --detach "$old_dir" "$old_rev"
fi
make -C "$old_dir" --no-print-directory install >/dev/null
make -C "$repo" --no-print-directory install >/dev/null
out=$repo/benchmarks/results/$(date +%Y%m%d-%H%M%S)-ab
mkdir -p "$out"
echo "old $(git -C "$old_dir" rev-parse --short HEAD)  new $(git -C "$repo" rev-parse --short HEAD)" | tee "$out/revs.txt"
run() {  # label dir pair
  "$bench" --lb aiohttp --dist-n 0 --lat-rate 0 --conns 16,64 \
    --lb-cmd "$2/benchmarks/heimdall-lb.sh" --lb-name "heimdall-$1" --out "$out/$1-p$3" ${AB_EXTRA:-}
}
for ((p = 1; p <= pairs; p++)); do
  if ((p % 2)); then run old "$old_dir" $p; run new "$repo" $p
  else run new "$repo" $p; run old "$old_dir" $p; fi
done
"$repo/.venv/bin/python" "$here/ab_report.py" "$out" | tee "$out/summary.md"
