#!/usr/bin/env bash
# sprout's GPU backend (wgpu through Vulkan) against PyTorch CUDA eager on the
# same GPU, at batch 64 and 256, on VGG-19 w16, MobileNetV1 w32 and VGG-19 w64
# (the size a grown network reaches): training and inference images/s, one
# side-by-side table. Runs in a few minutes.
#
#   scripts/gpu-bench.sh
#
# The machine needs PyTorch with CUDA and an NVIDIA Vulkan driver, but no Rust
# toolchain and no network: build the binary beforehand on a machine of the
# same architecture (`cargo build --release`) and point SPROUT at it. Where the
# machine has no Vulkan loader (`ldconfig -p | grep libvulkan` prints
# nothing), put the loader's Debian package (libvulkan1) in VULKAN_DEBS; the
# script unpacks it into / first (root only).
#
# Environment: SPROUT (binary, default target/release/sprout), PYTHON (default
# python3), BATCHES (default "64 256"), NETS (default "vgg19:16
# mobilenet-v1:32 vgg19:64"), WINDOWS and WINDOW_SECONDS (per engine and row,
# default 5 and 0.5), VULKAN_DEBS (a folder of .deb files), OUT (where the
# JSON lines go, default a temporary file), TORCH_DEVICE (default cuda; cpu
# tries the script out on a machine without CUDA, e.g. on Mesa lavapipe).
set -euo pipefail
cd "$(dirname "$0")/.."
SPROUT=${SPROUT:-target/release/sprout}
PYTHON=${PYTHON:-python3}
BATCHES=${BATCHES:-"64 256"}
NETS=${NETS:-"vgg19:16 mobilenet-v1:32 vgg19:64"}
WINDOWS=${WINDOWS:-5}
WINDOW_SECONDS=${WINDOW_SECONDS:-0.5}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
OUT=${OUT:-$(mktemp /tmp/gpu-bench.XXXXXX.jsonl)}
: >"$OUT"

if [ -n "${VULKAN_DEBS:-}" ]; then
  for f in "$VULKAN_DEBS"/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ ! -x "$SPROUT" ]; then
  echo "gpu-bench: no sprout binary at $SPROUT (build one with cargo build --release, or set SPROUT)" >&2
  exit 1
fi
devices=$("$SPROUT" devices)
echo "$devices" >&2
if grep -q "no GPU adapter" <<<"$devices"; then
  echo "gpu-bench: sprout found no GPU adapter (install the Vulkan loader and driver, or set VULKAN_DEBS)" >&2
  exit 1
fi
[ "$TORCH_DEVICE" != cuda ] || "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu-bench: PyTorch sees no CUDA device" >&2
  exit 1
}

for b in $BATCHES; do
  for g in $NETS; do
    net=${g%%:*} width=${g##*:}
    echo "batch $b: $net w$width" >&2
    "$SPROUT" bench --backend gpu --json --net "$net" --width "$width" \
      --steps train,infer --batch "$b" --windows "$WINDOWS" \
      --window-seconds "$WINDOW_SECONDS" |
      sed "s/^/{\"engine_kind\": \"sprout\", \"batch\": $b, \"row\": /; s/\$/}/" >>"$OUT"
    "$PYTHON" scripts/torch-reference.py bench --device "$TORCH_DEVICE" --json --net "$net" \
      --width "$width" --steps train,infer --batch "$b" --windows "$WINDOWS" \
      --window-seconds "$WINDOW_SECONDS" |
      sed "s/^/{\"engine_kind\": \"torch\", \"batch\": $b, \"row\": /; s/\$/}/" >>"$OUT"
  done
done

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    d = json.loads(line)
    r = d["row"]
    key = (r["net"], r["step"], d["batch"])
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key][d["engine_kind"]] = r["images_per_s"]
print("| network | step | batch | sprout GPU (images/s) | PyTorch eager (images/s) | sprout / PyTorch |")
print("|---|---|---:|---:|---:|---:|")
for key in order:
    e = rows[key]
    s, t = e.get("sprout"), e.get("torch")
    ratio = f"{s / t:.2f}x" if s and t else "-"
    fmt = lambda v: f"{v:,.0f}" if v else "-"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(s)} | {fmt(t)} | {ratio} |")
EOF
echo "JSON lines: $OUT" >&2
