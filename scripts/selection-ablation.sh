#!/usr/bin/env bash
# Every selection rule with prunes, without prunes and (box) with prunes
# admitted after the splits, plus the noise-theta ablation, on the default
# embedded run (`sprout grow` defaults); two runs at a time, one thread each.
# Usage: scripts/selection-ablation.sh OUT [SPROUT_BINARY]
# Writes OUT/<rule>/ run directories and OUT/summary.md.
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
)
for r in "${runs[@]}"; do
  name=${r%%:*}
  flags=${r#*:}
  if [ -f "$out/$name/final.json" ]; then continue; fi
  rm -rf "${out:?}/$name"
  # shellcheck disable=SC2086
  "$bin" grow --threads 1 $flags --out "$out/$name" >"$out/$name.log" 2>&1 &
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 2; done
done
wait
python3 - "$out" "${runs[@]}" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = ["| run | true dL per phase (frozen BN) | BN refreshed | est. dL (set) | splits / prunes per phase | mean scale | final test acc | params |",
        "|---|---|---|---|---|---|---:|---:|"]
for r in sys.argv[2:]:
    name = r.split(":")[0]
    d = os.path.join(out, name)
    try:
        ph = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
        fin = json.load(open(os.path.join(d, "final.json")))
    except OSError:
        continue
    f = lambda k: " ".join(f"{p[k]:+.3f}" for p in ph)
    est = " ".join("-" if p["joint_estimated_delta_loss"] is None else f"{p['joint_estimated_delta_loss']:+.3f}" for p in ph)
    sp = " ".join(f"{p['splits']}/{p['prunes']}" for p in ph)
    sc = sum(p["split_scale_mean"] for p in ph) / len(ph)
    rows.append(f"| {name} | {f('true_delta_loss')} | {f('true_delta_loss_recalibrated')} | {est} | {sp} | {sc:.3f} | {100*fin['test_accuracy']:.2f}% | {fin['params']} |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
