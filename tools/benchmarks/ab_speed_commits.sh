#!/usr/bin/env bash
# Interleaved A/B of the two speed changes of commit 8320396, in separate 1-thread processes run one
# after the other (the allocator setting is process-wide, so it cannot be toggled inside one process):
#   A  the code before (BEFORE, default 77fcd98), glibc's default allocator
#   B  A with the allocator setting, given as glibc environment variables (= the allocator alone)
#   C  this checkout with --set retain_freed_memory=false            (= the decoder layout fix alone)
#   D  this checkout as configured (both changes)
# Usage: bash tools/benchmarks/ab_speed_commits.sh [ROUNDS] [OUT] [BEFORE]   (run on an idle machine)
# Writes OUT/{A,B,C,D}_<round>.json (tools.benchmarks.training_speed) and OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}; OUT=$(realpath -m "${2:-runs/ab_speed}"); BEFORE=${3:-77fcd98}
PY="$PWD/.venv/bin/python"   # not realpath: the venv link must stay unresolved
WT=$(mktemp -d)/before
git worktree add --detach "$WT" "$BEFORE" >/dev/null
trap 'git worktree remove --force "$WT"' EXIT
mkdir -p "$OUT"
ARGS="--threads 1 --iterations 12 --warmup 3 --skip_flops --inference_runs 10 --reference_runs 0 --augment_images 0"
run() {  # run DIR NAME ENV_ASSIGNMENT... -- TRAINING_SPEED_ARGS...
    local dir=$1 name=$2; shift 2
    local envs=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    [ "$#" -gt 0 ] && shift
    (cd "$dir" && env OMP_NUM_THREADS=1 "${envs[@]}" "$PY" -m tools.benchmarks.training_speed $ARGS "$@" \
        --json "$OUT/$name.json" >/dev/null)
}
for r in $(seq 1 "$ROUNDS"); do
    run "$WT" "A_$r"
    run "$WT" "B_$r" MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824
    run . "C_$r" -- --set retain_freed_memory=false
    run . "D_$r"
done
"$PY" - "$OUT" "$ROUNDS" "$BEFORE" "$(git rev-parse --short HEAD)" <<'PY'
import json, statistics, sys
out, rounds, before, head = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
load = lambda v, r: json.load(open(f"{out}/{v}_{r}.json"))
summary = {"before": before, "after": head, "rounds": rounds, "variants": {}}
for v in "ABCD":
    runs = [load(v, r) for r in range(1, rounds + 1)]
    summary["variants"][v] = {
        "step_wall_median_s": [x["training"]["step_wall_median_s"] for x in runs],
        "inference_wall_median_s": [x["inference"]["wall_median_s"] for x in runs],
        "load_average": [x["machine"].get("load_average") for x in runs],
        "cpu": runs[0]["machine"].get("cpu"),
    }
a = summary["variants"]["A"]
for v in "BCD":
    s = summary["variants"][v]
    s["step_ratio_to_A"] = [round(x / y, 3) for x, y in zip(s["step_wall_median_s"], a["step_wall_median_s"])]
    s["inference_ratio_to_A"] = [round(x / y, 3) for x, y in zip(s["inference_wall_median_s"], a["inference_wall_median_s"])]
    s["step_ratio_median"] = statistics.median(s["step_ratio_to_A"])
    s["inference_ratio_median"] = statistics.median(s["inference_ratio_to_A"])
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps({v: (summary["variants"][v].get("step_ratio_median"), summary["variants"][v].get("inference_ratio_median")) for v in "BCD"}))
PY
