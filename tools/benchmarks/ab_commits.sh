#!/usr/bin/env bash
# Interleaved A/B(/C...) of commits: the training step and `predict` of the default config, each commit
# in a worktree of its own, separate 1-thread processes run one after the other, ROUNDS rounds
# (tools.benchmarks.training_speed; phantom images of 128 x 128 in batches of the config's batch_size (1 since metadata 0.6.0;
# 4 before), 12 timed steps after 3 warm-up).
# Usage: bash tools/benchmarks/ab_commits.sh ROUNDS OUT COMMIT_A COMMIT_B [COMMIT_C ...]   (an idle machine)
# AB_EXTRA_ARGS (environment) adds training_speed arguments to every run, e.g. AB_EXTRA_ARGS="--batch 4".
# Writes OUT/<commit>_<round>.json and OUT/summary.json (medians per round, ratios to COMMIT_A).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=$1; OUT=$(realpath -m "$2"); shift 2
[ "$#" -ge 2 ] || { echo "give at least two commits" >&2; exit 2; }
PY="$PWD/.venv/bin/python"   # not realpath: the venv link must stay unresolved
TMP=$(mktemp -d)
COMMITS=(); DIRS=()
for c in "$@"; do
    sha=$(git rev-parse --short "$c")
    git worktree add --detach "$TMP/$sha" "$sha" >/dev/null
    COMMITS+=("$sha"); DIRS+=("$TMP/$sha")
done
trap 'for d in "${DIRS[@]}"; do git worktree remove --force "$d"; done; rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
ARGS="--threads 1 --iterations 12 --warmup 3 --skip_flops --inference_runs 10 --reference_runs 0 --augment_images 0 ${AB_EXTRA_ARGS:-}"
for r in $(seq 1 "$ROUNDS"); do
    for i in "${!COMMITS[@]}"; do
        (cd "${DIRS[$i]}" && OMP_NUM_THREADS=1 "$PY" -m tools.benchmarks.training_speed $ARGS \
            --json "$OUT/${COMMITS[$i]}_$r.json" >/dev/null)
    done
done
"$PY" - "$OUT" "$ROUNDS" "${COMMITS[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, commits = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {c: [json.load(open(f"{out}/{c}_{r}.json")) for r in range(1, rounds + 1)] for c in commits}
summary = {"commits": commits, "rounds": rounds, "threads": 1, "extra_args": os.environ.get("AB_EXTRA_ARGS", ""), "variants": {}}
for c in commits:
    summary["variants"][c] = {
        "step_wall_median_s": [x["training"]["step_wall_median_s"] for x in runs[c]],
        "inference_wall_median_s": [x["inference"]["wall_median_s"] for x in runs[c]],
        "load_average": [x["machine"].get("load_average") for x in runs[c]],
        "cpu": runs[c][0]["machine"].get("cpu"),
    }
a = summary["variants"][commits[0]]
for c in commits[1:]:
    s = summary["variants"][c]
    for key, name in (("step_wall_median_s", "step"), ("inference_wall_median_s", "inference")):
        ratios = [round(x / y, 3) for x, y in zip(s[key], a[key])]
        s[f"{name}_ratio_to_{commits[0]}"] = ratios
        s[f"{name}_ratio_median"] = statistics.median(ratios)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
for c in commits:
    s = summary["variants"][c]
    print(c, "step", s["step_wall_median_s"], "predict", s["inference_wall_median_s"],
          "ratios", s.get("step_ratio_median"), s.get("inference_ratio_median"))
PY
