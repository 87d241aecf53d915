#!/usr/bin/env bash
# sprout against PyTorch on the rows of `sprout bench` (VGG-19 w4, w8, w16,
# w64; MobileNetV1 w8, w32; training and inference, batch 64), in one run that
# alternates the two engines row group by row group, so that both see the
# same machine load. Prints one table: medians over the rounds, sprout's
# GFLOP/s and fraction of the GEMM peak it measured, and sprout / PyTorch.
#
#   scripts/bench-side-by-side.sh [ROUNDS]        (default 3)
#
# Environment: SPROUT (binary, default target/release/sprout), PYTHON
# (default python3), THREADS (default 2), BATCH (default 64), WINDOWS and
# WINDOW_SECONDS (per engine and row, default 5 and 0.5), NETS (row groups,
# default "vgg19:4 vgg19:8 vgg19:16 vgg19:64 mobilenet-v1:8 mobilenet-v1:32"),
# OUT (where the JSON lines go, default a temporary file).
# Needs torch (pip install torch) and a release build of sprout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SPROUT=${SPROUT:-target/release/sprout}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
BATCH=${BATCH:-64}
WINDOWS=${WINDOWS:-5}
WINDOW_SECONDS=${WINDOW_SECONDS:-0.5}
NETS=${NETS:-"vgg19:4 vgg19:8 vgg19:16 vgg19:64 mobilenet-v1:8 mobilenet-v1:32"}
OUT=${OUT:-$(mktemp /tmp/side-by-side.XXXXXX.jsonl)}
: >"$OUT"

run_sprout() {
  "$SPROUT" bench --json --net "$1" --width "$2" --steps train,infer \
    --threads "$THREADS" --batch "$BATCH" --windows "$WINDOWS" \
    --window-seconds "$WINDOW_SECONDS" | sed 's/^/{"engine_kind": "sprout", "row": /; s/$/}/' >>"$OUT"
}
run_torch() {
  "$PYTHON" scripts/torch-reference.py bench --json --net "$1" --width "$2" \
    --steps train,infer --threads "$THREADS" --batch "$BATCH" \
    --windows "$WINDOWS" --window-seconds "$WINDOW_SECONDS" |
    sed 's/^/{"engine_kind": "torch", "row": /; s/$/}/' >>"$OUT"
}

for ((r = 0; r < ROUNDS; r++)); do
  for g in $NETS; do
    net=${g%%:*} width=${g##*:}
    echo "round $((r + 1))/$ROUNDS: $net w$width" >&2
    # Alternate which engine goes first in each round.
    if ((r % 2 == 0)); then
      run_sprout "$net" "$width"
      run_torch "$net" "$width"
    else
      run_torch "$net" "$width"
      run_sprout "$net" "$width"
    fi
  done
done

"$PYTHON" - "$OUT" "$ROUNDS" "$THREADS" "$BATCH" <<'EOF'
import json, statistics, sys
path, rounds, threads, batch = sys.argv[1:]
rates, gflops, fraction, peaks, torch_version = {}, {}, {}, [], ""
for line in open(path):
    o = json.loads(line)
    kind, row = o["engine_kind"], o["row"]
    key = (row["net"], row["step"])
    rates.setdefault((kind,) + key, []).append(row["images_per_s"])
    if kind == "sprout":
        gflops.setdefault(key, []).append(row["gflops"])
        fraction.setdefault(key, []).append(row["peak_fraction"])
        peaks.append(row["gemm_peak_gflops"])
    else:
        torch_version = row["engine"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
med = statistics.median
print(f"{cpu}, {threads} threads, batch {batch}; medians of {rounds} alternating rounds; "
      f"sprout's GEMM peak {med(peaks):.0f} GFLOP/s (runs {min(peaks):.0f}-{max(peaks):.0f}); {torch_version}, channels-last")
print()
print("| net | step | sprout images/s | PyTorch images/s | sprout / PyTorch | sprout GFLOP/s | of GEMM peak |")
print("|---|---|---|---|---|---|---|")
keys = sorted({k[1:] for k in rates if k[0] == "sprout"}, key=lambda k: list(rates).index(("sprout",) + k))
for net, step in keys:
    s = med(rates[("sprout", net, step)])
    t = rates.get(("torch", net, step))
    t = med(t) if t else float("nan")
    print(f"| {net} | {step} | {s:,.0f} | {t:,.0f} | {s / t:.2f}x | "
          f"{med(gflops[(net, step)]):.1f} | {100 * med(fraction[(net, step)]):.0f}% |")
print()
print(f"(JSON lines in {path})")
EOF
