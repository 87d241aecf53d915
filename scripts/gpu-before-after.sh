#!/usr/bin/env bash
# Training and inference images/s of two sprout builds on the GPU backend,
# alternated so that load from other work falls on both alike.
#
#   BEFORE=/tmp/sprout-before AFTER=target/release/sprout scripts/gpu-before-after.sh
#
# ROUNDS (default 3) rounds; each round runs BEFORE then AFTER on every row.
# ROWS: space-separated net:width pairs (default "vgg19:16 mobilenet-v1:32").
# BATCH (default 64), WINDOWS (default 3) pass through to `sprout bench`;
# ADAPTER picks the adapter (see `sprout devices`). Prints medians and
# after/before ratios, with the load average at the start and the end.
set -euo pipefail

: "${BEFORE:?set BEFORE to the sprout binary before the change}"
: "${AFTER:?set AFTER to the sprout binary after the change}"
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-"vgg19:16 mobilenet-v1:32"}
BATCH=${BATCH:-64}
WINDOWS=${WINDOWS:-3}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

adapter=()
if [[ -n "${ADAPTER:-}" ]]; then
    adapter=(--adapter "$ADAPTER")
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }
start_load=$(load)

for ((r = 1; r <= ROUNDS; r++)); do
    for row in $ROWS; do
        net=${row%%:*}
        width=${row##*:}
        for side in before after; do
            bin=$BEFORE
            [[ $side == after ]] && bin=$AFTER
            echo "round $r/$ROUNDS: $side $net w$width" >&2
            "$bin" bench --backend gpu "${adapter[@]}" --json --net "$net" --width "$width" \
                --batch "$BATCH" --windows "$WINDOWS" --steps train,infer |
                sed -n 's/.*"images_per_s":\([0-9.eE+-]*\).*"net":"\([^"]*\)".*"step":"\([a-z-]*\)".*/\2 \3 '"$side"' \1/p' >>"$out"
        done
    done
done

echo "load average (1, 5, 15 min): $start_load at the start, $(load) at the end"
echo "engine: $("$AFTER" devices 2>/dev/null | sed -n 2p | sed 's/  */ /g')"
awk -v rounds="$ROUNDS" '
function median(key,   n, i, j, t, v) {
    n = split(vals[key], v, " ")
    for (i = 1; i <= n; i++)
        for (j = i + 1; j <= n; j++)
            if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{
    key = $1 " " $2 " " $3
    vals[key] = vals[key] " " $4
    if (!(($1 " " $2) in seen)) { seen[$1 " " $2] = 1; order[++rows] = $1 " " $2 }
}
END {
    printf "%-18s %-6s %12s %12s %8s\n", "net", "step", "before/s", "after/s", "ratio"
    for (i = 1; i <= rows; i++) {
        split(order[i], f, " ")
        b = median(order[i] " before"); a = median(order[i] " after")
        printf "%-18s %-6s %12.1f %12.1f %7.2fx\n", f[1], f[2], b, a, a / b
    }
    printf "(medians of %d rounds, batch images/s)\n", rounds
}' "$out"
