#!/usr/bin/env python3
"""Rebuild a sprout run's network in PyTorch and test it.

Reads nothing but the run directory: the architecture and the tensors from
model.safetensors (its metadata `arch`), and how the images are prepared
from its metadata `padding`, `normalization`, `class_names` and `dataset`
(or, for older files, from config.json). Builds the network layer by layer
(VGG-19: conv3x3 -> BN -> ReLU [-> max-pool 2x2 after convs 2, 4, 8, 12, 16],
flatten, linear; MobileNetV1: conv3x3 -> BN -> ReLU, then per block a
depthwise 3x3 (stride 2 in blocks 2, 4, 6, 12) -> BN -> ReLU and a pointwise
1x1 -> BN -> ReLU, global average pool, linear; no conv biases, BN eps
1e-5), reads the dataset's test split from its files, pads and normalises
it as recorded, and prints the test accuracy with BN in eval mode. Given the
sprout binary (--sprout), it also prints what `sprout eval --run DIR` says.

    python3 scripts/torch-rebuild.py runs/grow --sprout target/release/sprout
    python3 scripts/torch-rebuild.py runs/train --data /usr/share/datasets/fashion-mnist

Needs torch and numpy. The safetensors file is parsed here (no package).
"""

import argparse
import gzip
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-5
VGG_POOL_AFTER = {1, 3, 7, 11, 15}  # zero-based convs followed by a 2x2 max-pool
MOBILENET_STRIDE2_BLOCKS = {2, 4, 6, 12}  # 1-based blocks with a stride-2 depthwise conv
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
    "fashion-mnist-embedded": str(REPO / "cli" / "data" / "fashion-mnist-embedded"),
}


def read_safetensors(path):
    """(tensors by name as float32 numpy arrays, metadata dict)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        start, end = t["data_offsets"]
        a = np.frombuffer(raw[base + start : base + end], dtype="<f4")
        tensors[name] = a.reshape(t["shape"]).astype(np.float32)
    return tensors, meta


class Unit(nn.Module):
    """One growable layer: conv -> BN -> ReLU, then a max-pool or (MobileNet)
    the next block's depthwise conv -> BN -> ReLU. Parameter names are
    sprout's (layers.L.conv.weight, layers.L.next_depthwise.bn.running_var, ...)."""

    def __init__(self, cin, cout, kernel, post, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.post = post
        if post == "depthwise":
            self.next_depthwise = Depthwise(cout, stride)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if self.post == "maxpool":
            x = F.max_pool2d(x, 2)
        elif self.post == "depthwise":
            x = self.next_depthwise(x)
        return x


class Depthwise(nn.Module):
    def __init__(self, channels, stride):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, 3, 3))
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.stride = stride

    def forward(self, x):
        x = F.conv2d(x, self.weight, stride=self.stride, padding=1, groups=x.shape[1])
        return F.relu(self.bn(x))


class Net(nn.Module):
    def __init__(self, arch):
        super().__init__()
        family, widths = arch["family"], arch["widths"]
        self.family = family
        cin, units = arch["input"][0], []
        for l, w in enumerate(widths):
            if family == "vgg19":
                units.append(Unit(cin, w, 3, "maxpool" if l in VGG_POOL_AFTER else None))
            elif family == "mobilenet_v1":
                kernel = 3 if l == 0 else 1
                if l + 1 < len(widths):
                    stride = 2 if (l + 1) in MOBILENET_STRIDE2_BLOCKS else 1
                    units.append(Unit(cin, w, kernel, "depthwise", stride))
                else:
                    units.append(Unit(cin, w, kernel, None))
            else:
                sys.exit(f"unknown architecture family {family}")
            cin = w
        self.layers = nn.ModuleList(units)
        with torch.no_grad():
            features = self.features(torch.zeros(1, *arch["input"])).shape[1]
        self.head = nn.Linear(features, arch["classes"])

    def features(self, x):
        for u in self.layers:
            x = u(x)
        if self.family == "mobilenet_v1":
            return x.mean(dim=(2, 3))
        return torch.flatten(x, 1)

    def forward(self, x):
        return self.head(self.features(x))


def load_net(tensors, arch):
    net = Net(arch)
    state = net.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = wanted - tensors.keys()
    if missing:
        sys.exit(f"model.safetensors lacks {sorted(missing)[:5]}")
    for k in wanted:
        if tuple(state[k].shape) != tensors[k].shape:
            sys.exit(f"tensor {k} has shape {tensors[k].shape}, the network needs {tuple(state[k].shape)}")
    net.load_state_dict({k: torch.from_numpy(tensors[k]) for k in wanted}, strict=False)
    return net.eval()


def read_idx(path):
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(directory, name):
    for p in (Path(directory) / name, Path(directory) / f"{name}.gz"):
        if p.is_file():
            return p
    sys.exit(f"missing {Path(directory) / name}[.gz]")


def test_split(dataset, directory):
    """Test images (N, C, H, W) uint8 as in the files, and labels."""
    if dataset in ("fashion-mnist", "mnist", "fashion-mnist-embedded"):
        images = read_idx(find(directory, "t10k-images-idx3-ubyte"))
        labels = read_idx(find(directory, "t10k-labels-idx1-ubyte"))
        return images[:, None, :, :], labels.astype(np.int64)
    if dataset in ("cifar10", "cifar100"):
        sub = "cifar-10-batches-bin" if dataset == "cifar10" else "cifar-100-binary"
        name = "test_batch.bin" if dataset == "cifar10" else "test.bin"
        path = Path(directory) / name
        if not path.is_file():
            path = Path(directory) / sub / name
        label_bytes = 1 if dataset == "cifar10" else 2  # CIFAR-100: coarse, fine
        rec = np.fromfile(path, dtype=np.uint8).reshape(-1, label_bytes + 3072)
        return rec[:, label_bytes:].reshape(-1, 3, 32, 32), rec[:, label_bytes - 1].astype(np.int64)
    sys.exit(f"unknown dataset {dataset}")


def recorded(run, meta):
    """The input description: the model's metadata, else config.json."""
    keys = ("dataset", "class_names", "padding", "normalization")
    if all(k in meta for k in keys):
        return {k: (meta[k] if k == "dataset" else json.loads(meta[k])) for k in keys}
    config = json.loads((run / "config.json").read_text())
    if "normalization" not in config:
        sys.exit(f"{run}: no recorded normalisation (a run written before sprout recorded it)")
    return {k: config[k] for k in keys}


def prepare(images, padding, normalization):
    """Zero-pad the raw pixels, then x -> (x / 255 - mean) / std, computed in
    float32 exactly as sprout does: x * (1 / (255 std)) + (-mean / std)."""
    if list(images.shape[1:]) != padding["source"]:
        sys.exit(f"the files hold {list(images.shape[1:])} images, the run recorded {padding['source']}")
    n, c, h, w = images.shape
    t, b, l, r = padding["top"], padding["bottom"], padding["left"], padding["right"]
    padded = np.zeros((n, c, h + t + b, w + l + r), dtype=np.uint8)
    padded[:, :, t : t + h, l : l + w] = images
    mean = np.array(normalization["mean"], dtype=np.float32)
    std = np.array(normalization["std"], dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std)).reshape(1, c, 1, 1)
    shift = (-mean / std).reshape(1, c, 1, 1)
    return padded.astype(np.float32) * scale + shift


def sprout_eval(binary, run):
    out = subprocess.run([binary, "eval", "--run", str(run)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"sprout eval failed:\n{out.stderr}")
    m = re.search(r"test accuracy: ([0-9.]+)% \((\d+)/(\d+)\)", out.stdout)
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory holding model.safetensors")
    p.add_argument("--data", help="directory of the dataset files [default: config.json's data_dir, then where Debian installs them]")
    p.add_argument("--sprout", help="the sprout binary, to print `sprout eval --run RUN` beside")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tensors, meta = read_safetensors(args.run / "model.safetensors")
    arch = json.loads(meta["arch"])
    spec = recorded(args.run, meta)
    config_path = args.run / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    directory = args.data or config.get("data_dir") or DEFAULT_DIRS.get(spec["dataset"])
    if directory is None:
        sys.exit(f"{spec['dataset']}: pass --data DIR")

    net = load_net(tensors, arch)
    images, labels = test_split(spec["dataset"], directory)
    x = prepare(images, spec["padding"], spec["normalization"])
    correct = 0
    per_class = np.zeros((arch["classes"], 2), dtype=np.int64)
    with torch.no_grad():
        for i in range(0, len(x), args.batch):
            pred = net(torch.from_numpy(x[i : i + args.batch])).argmax(1).numpy()
            y = labels[i : i + args.batch]
            correct += int((pred == y).sum())
            np.add.at(per_class, (y, 0), pred == y)
            np.add.at(per_class, (y, 1), 1)
    acc = 100.0 * correct / len(x)
    params = sum(v.size for k, v in tensors.items() if not k.endswith(("running_mean", "running_var")))
    print(f"{args.run}: {arch['family']} widths {arch['widths']} ({params} parameters) on the {spec['dataset']} test set")
    print(f"  padding {spec['padding']}, mean {spec['normalization']['mean']}, std {spec['normalization']['std']}")
    worst = min(range(len(spec["class_names"])), key=lambda c: per_class[c, 0] / max(per_class[c, 1], 1))
    print(f"  weakest class: {spec['class_names'][worst]} ({100.0 * per_class[worst, 0] / max(per_class[worst, 1], 1):.1f}%)")
    print(f"PyTorch:     test accuracy {acc:.2f}% ({correct}/{len(x)})")
    if args.sprout:
        s_acc, s_correct, s_total = sprout_eval(args.sprout, args.run)
        print(f"sprout eval: test accuracy {s_acc:.2f}% ({s_correct}/{s_total})")
        print(f"difference:  {acc - s_acc:+.2f} points ({correct - s_correct:+d} images)")


if __name__ == "__main__":
    main()
