#!/usr/bin/env python3
"""PyTorch reference for `sprout train` and `sprout bench` (VGG-19 seed).

Builds the same network as sprout's `vgg19(width)` preset (16 conv3x3 + BN +
ReLU, max-pool after convs 2, 4, 8, 12, 16, flatten, linear), the same data
pipeline (Fashion-MNIST zero-padded 28x28 -> 32x32 in raw pixels, per-channel
normalisation with the training set's statistics, seeded shuffling, no
augmentation) and the same optimizer (SGD, Nesterov momentum 0.9, weight
decay 1e-4, constant learning rate), so sprout's accuracy and throughput can
be checked against an independent implementation on the same machine.

    python3 scripts/torch-reference.py train --epochs 3 --lr 0.05 --seed 0
    python3 scripts/torch-reference.py bench --threads 2

Needs torch and numpy (pip install torch numpy).
"""

import argparse
import gzip
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


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Vgg19(args.width).to(memory_format=FORMAT)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(args.batch, 1, 32, 32).contiguous(memory_format=FORMAT)
    y = torch.randint(0, 10, (args.batch,))

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    for name, step in (("train", train_step), ("infer", infer_step)):
        model.train(name == "train")
        for _ in range(10):
            step()
        rates = []
        for _ in range(args.windows):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.window_seconds:
                step()
                n += 1
            rates.append(n * args.batch / (time.perf_counter() - start))
        print(f"vgg19 w{args.width} {name}: {statistics.median(rates):.0f} img/s (median of {args.windows})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "bench"])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--width", type=int, default=16)
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
    p.add_argument("--format", choices=["channels-last", "nchw"], default="channels-last", help="memory format")
    args = p.parse_args()
    global FORMAT
    FORMAT = torch.channels_last if args.format == "channels-last" else torch.contiguous_format
    train(args) if args.mode == "train" else bench(args)


if __name__ == "__main__":
    main()
