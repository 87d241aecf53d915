#!/usr/bin/env bash
# Every selection rule with prunes, without prunes and (box) with prunes
# admitted after the splits, the noise-theta ablation, refinement of the
# chosen theta on the real loss and the exact logit curvature, on the default
# embedded run (`sprout grow` defaults, but theta unbounded unless a row sets
# --theta-max); two runs at a time, one thread each.
# Usage: [SEEDS="0 1 2"] [ONLY="box box-refine50"] scripts/selection-ablation.sh OUT [SPROUT_BINARY]
# Writes OUT/<rule>-s<seed>/ run directories (OUT/<rule>/ for seed 0 alone)
# and OUT/summary.md (per rule: mean over seeds, ± sample std).
set -euo pipefail
out=${1:?usage: selection-ablation.sh OUT [SPROUT_BINARY]}
bin=${2:-target/release/sprout}
mkdir -p "$out"
runs=(
  "independent:--selection independent"
  "independent-noprune:--selection independent --no-prune"
  "joint:--selection joint"
  "joint-noprune:--selection joint --no-prune"
  "scaled:--selection scaled"
  "scaled-noprune:--selection scaled --no-prune"
  "box:--selection box"
  "box-noprune:--selection box --no-prune"
  "box-prunes-after:--selection box --prunes-after-splits"
  "box-theta-noise:--selection box --theta noise"
  "box-refine50:--selection box --refine-steps 50"
  "box-exact-logits:--selection box --curvature exact-logits"
  "box-theta-max1:--selection box --theta-max 1"
)
seeds=(${SEEDS:-0})
if [ -n "${ONLY:-}" ]; then
  keep=()
  for r in "${runs[@]}"; do
    for o in $ONLY; do [ "${r%%:*}" = "$o" ] && keep+=("$r"); done
  done
  runs=("${keep[@]}")
fi
dir_of() { if [ "${#seeds[@]}" -eq 1 ] && [ "${seeds[0]}" = 0 ]; then echo "$out/$1"; else echo "$out/$1-s$2"; fi; }
for seed in "${seeds[@]}"; do
  for r in "${runs[@]}"; do
    name=${r%%:*}
    flags=${r#*:}
    dir=$(dir_of "$name" "$seed")
    if [ -f "$dir/final.json" ]; then continue; fi
    rm -rf "${dir:?}"
    # Unbounded theta (as these rows were first measured) unless the row bounds it.
    case " $flags " in *" --theta-max "*) ;; *) flags="--theta-max inf $flags" ;; esac
    # shellcheck disable=SC2086
    "$bin" grow --threads 1 --seed "$seed" $flags --out "$dir" >"$dir.log" 2>&1 &
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 2; done
  done
done
wait
dirs=()
for r in "${runs[@]}"; do
  d=""
  for seed in "${seeds[@]}"; do d+="$(dir_of "${r%%:*}" "$seed") "; done
  dirs+=("${r%%:*}=$d")
done
python3 - "$out" "${dirs[@]}" <<'PY'
import json, sys, os, statistics as st
out = sys.argv[1]
rows = ["| run | seeds | true dL per phase (frozen BN) | BN refreshed | est. dL (set) | splits / prunes per phase | mean scale | final test acc | params |",
        "|---|---:|---|---|---|---|---|---:|---:|"]
def ms(v, fmt):
    return fmt.format(st.mean(v)) + ("" if len(v) < 2 else " ± " + fmt.format(st.stdev(v)).lstrip("+"))
for arg in sys.argv[2:]:
    name, ds = arg.split("=", 1)
    runs = []
    for d in ds.split():
        try:
            ph = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
            fin = json.load(open(os.path.join(d, "final.json")))
        except OSError:
            continue
        runs.append((ph, fin))
    if not runs:
        continue
    phases = len(runs[0][0])
    col = lambda k: " ".join("{:+.3f}".format(st.mean(r[0][i][k] for r in runs)) for i in range(phases))
    est = " ".join("-" if any(r[0][i]["joint_estimated_delta_loss"] is None for r in runs)
                   else "{:+.3f}".format(st.mean(r[0][i]["joint_estimated_delta_loss"] for r in runs)) for i in range(phases))
    sp = " ".join("{:.0f}/{:.0f}".format(st.mean(r[0][i]["splits"] for r in runs), st.mean(r[0][i]["prunes"] for r in runs)) for i in range(phases))
    sc = st.mean(p["split_scale_mean"] for r in runs for p in r[0])
    acc = ms([100 * r[1]["test_accuracy"] for r in runs], "{:.2f}")
    par = ms([r[1]["params"] for r in runs], "{:.0f}")
    rows.append(f"| {name} | {len(runs)} | {col('true_delta_loss')} | {col('true_delta_loss_recalibrated')} | {est} | {sp} | {sc:.3f} | {acc}% | {par} |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
