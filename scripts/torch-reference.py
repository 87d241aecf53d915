#!/usr/bin/env python3
"""PyTorch reference for `sprout train` (VGG-19 seed) and `sprout bench`.

Builds the same network as sprout's `vgg19(width)` preset (16 conv3x3 + BN +
ReLU, max-pool after convs 2, 4, 8, 12, 16, flatten, linear), the same data
pipeline (Fashion-MNIST zero-padded 28x28 -> 32x32 in raw pixels, per-channel
normalisation with the training set's statistics, seeded shuffling, no
augmentation) and the same optimizer (SGD, Nesterov momentum 0.9, weight
decay 1e-4, constant learning rate), so sprout's accuracy and throughput can
be checked against an independent implementation on the same machine.

`bench` times the rows of `sprout bench` (VGG-19 w4, w8, w16, w64 and
MobileNetV1 w8, w32 on 1x32x32 inputs, batch 64; training steps with the same
SGD, and inference in eval mode) and prints one line per row, or JSON lines
with the keys of `sprout bench --json` (`net`, `step`, `images_per_s`).
MobileNetV1 is sprout's `mobilenet_v1(width)`: conv3x3 + BN + ReLU, then 13
blocks of depthwise 3x3 (stride 2 in blocks 2, 4, 6, 12) + BN + ReLU and
pointwise 1x1 + BN + ReLU, global average pool, linear.

    python3 scripts/torch-reference.py train --epochs 3 --lr 0.05 --seed 0
    python3 scripts/torch-reference.py bench --threads 2
    python3 scripts/torch-reference.py bench --net vgg19 --width 16,64 --steps train --json

Needs torch and numpy (pip install torch numpy).
"""

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = torch.channels_last  # set from --format in main()
POOL_AFTER = {1, 3, 7, 11, 15}  # zero-based conv indices followed by max-pool


class Vgg19(nn.Module):
    def __init__(self, width, in_ch=1, classes=10, init="sprout"):
        super().__init__()
        layers = []
        c = in_ch
        for i in range(16):
            layers += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)
        if init == "sprout":
            # sprout's Network::init: Kaiming-normal (fan-out, ReLU) convs,
            # BN 1/0, nn.Linear's default head.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


MOBILENET_STRIDE2_BLOCKS = {2, 4, 6, 12}  # 1-based blocks with a stride-2 depthwise conv


def conv_bn_relu(cin, cout, kernel, stride=1, groups=1):
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class MobilenetV1(nn.Module):
    def __init__(self, width, in_ch=1, classes=10):
        super().__init__()
        layers = conv_bn_relu(in_ch, width, 3)
        for block in range(1, 14):
            stride = 2 if block in MOBILENET_STRIDE2_BLOCKS else 1
            layers += conv_bn_relu(width, width, 3, stride, groups=width)
            layers += conv_bn_relu(width, width, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


# The rows of `sprout bench`: (family, widths).
BENCH_NETS = (("vgg19", (4, 8, 16, 64)), ("mobilenet-v1", (8, 32)))


def read_idx(path):
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz")
    padded = np.zeros((len(images), 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return padded, labels.astype(np.int64)


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    xtr, ytr = load(args.data, "train")
    xte, yte = load(args.data, "test")
    pixels = xtr.astype(np.float64) / 255.0
    mean, std = pixels.mean(), pixels.std()
    norm = lambda x: torch.from_numpy(((x.astype(np.float32) / 255.0) - mean) / std).float()
    xtr_t, xte_t = norm(xtr), norm(xte)
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = Vgg19(args.width, init=args.init).to(memory_format=FORMAT)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=0.9,
        nesterov=not args.plain_momentum,
        weight_decay=args.weight_decay,
    )
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr_t), generator=gen)
        total, seen, correct = 0.0, 0, 0
        start = time.perf_counter()
        for b in range(0, len(order), args.batch):
            idx = order[b : b + args.batch]
            x = xtr_t[idx].contiguous(memory_format=FORMAT)
            y = ytr_t[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        secs = time.perf_counter() - start
        model.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(xte_t), 500):
                logits = model(xte_t[i : i + 500].contiguous(memory_format=FORMAT))
                hits += (logits.argmax(1) == yte_t[i : i + 500]).sum().item()
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {total / seen:.4f}  train {100 * correct / seen:6.2f}%  "
            f"test {100 * hits / len(xte_t):6.2f}%  {seen / secs:8.0f} img/s",
            flush=True,
        )


def bench_row(family, width, steps, args):
    """Median images/s of the training and inference steps of one network."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = (Vgg19(width) if family == "vgg19" else MobilenetV1(width)).to(device, memory_format=FORMAT)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(args.batch, 1, 32, 32).to(device).contiguous(memory_format=FORMAT)
    y = torch.randint(0, 10, (args.batch,)).to(device)
    # CUDA steps are asynchronous: a window ends when the device has finished.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    out = {}
    for name, step in (("train", train_step), ("infer", infer_step)):
        if name not in steps:
            continue
        model.train(name == "train")
        # Warm-up: at least 3 steps and 0.3 s, like `sprout bench`.
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < 0.3:
            step()
            n += 1
        sync()
        rates = []
        for _ in range(args.windows):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.window_seconds:
                step()
                n += 1
            sync()
            rates.append(n * args.batch / (time.perf_counter() - start))
        out[name] = statistics.median(rates)
    return out


def bench(args):
    torch.set_num_threads(args.threads)
    steps = args.steps.split(",")
    widths = [int(w) for w in args.width.split(",")] if args.width else None
    for family, family_widths in BENCH_NETS:
        if args.net not in ("all", family):
            continue
        for width in family_widths:
            if widths is not None and width not in widths:
                continue
            for step, rate in bench_row(family, width, steps, args).items():
                net = f"{family}-w{width}"
                if args.json:
                    row = {"net": net, "step": step, "images_per_s": rate, "batch": args.batch,
                           "engine": f"torch {torch.__version__}", "device": args.device,
                           "threads": args.threads}
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{net} {step}: {rate:.0f} img/s (median of {args.windows})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "bench"])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--width", default=None, help="train: the width (default 16); bench: widths to time, comma-separated (default: all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--plain-momentum", action="store_true", help="momentum without Nesterov")
    p.add_argument("--init", choices=["sprout", "torch"], default="sprout", help="conv init: sprout's or PyTorch's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window-seconds", type=float, default=1.0)
    p.add_argument("--net", choices=["all", "vgg19", "mobilenet-v1"], default="all", help="bench: the family to time")
    p.add_argument("--steps", default="train,infer", help="bench: train, infer or both, comma-separated")
    p.add_argument("--json", action="store_true", help="bench: one JSON object per line")
    p.add_argument("--format", choices=["channels-last", "nchw"], default="channels-last", help="memory format")
    p.add_argument("--device", default="cpu", help="bench: torch device, e.g. cpu or cuda")
    args = p.parse_args()
    global FORMAT
    FORMAT = torch.channels_last if args.format == "channels-last" else torch.contiguous_format
    if args.mode == "train":
        args.width = int(args.width or 16)
        train(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
