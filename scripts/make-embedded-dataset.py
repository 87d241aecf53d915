#!/usr/bin/env python3
"""Builds the class-balanced Fashion-MNIST subset embedded in the sprout binary.

Reads the four gzipped IDX files of Fashion-MNIST (by default from the Debian
package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist; another
directory can be given as the first argument), keeps the first 600 images of
each class of the training file (6,000 images) and the first 100 of each class
of the test file (1,000 images), both in file order, and writes them as
gzipped IDX files with the same names to lab/data/fashion-mnist-embedded/.

The gzip headers carry no timestamp or file name, so the output is
byte-for-byte reproducible. Uses the Python standard library only.

Usage: python3 scripts/make-embedded-dataset.py [SOURCE_DIR]
"""

import gzip
import os
import struct
import sys

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
OUT_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "cli", "data", "fashion-mnist-embedded"
)
CLASSES = 10
SPLITS = [
    # (image file, label file, images kept per class)
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 600),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 100),
]
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def fail(msg):
    sys.exit(f"make-embedded-dataset: {msg}")


def read_gz(path):
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        fail(f"missing {path}: install the Debian package dataset-fashion-mnist "
             "or pass the directory holding the files")
    except (OSError, EOFError) as e:
        fail(f"{path}: {e}")


def parse_images(path, data):
    if len(data) < 16:
        fail(f"{path}: truncated IDX images header")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGES_MAGIC:
        fail(f"{path}: wrong magic {magic:#010x}, expected {IMAGES_MAGIC:#010x}")
    size = rows * cols
    if len(data) != 16 + n * size:
        fail(f"{path}: expected {16 + n * size} bytes, found {len(data)}")
    return n, rows, cols, data[16:]


def parse_labels(path, data):
    if len(data) < 8:
        fail(f"{path}: truncated IDX labels header")
    magic, n = struct.unpack(">II", data[:8])
    if magic != LABELS_MAGIC:
        fail(f"{path}: wrong magic {magic:#010x}, expected {LABELS_MAGIC:#010x}")
    if len(data) != 8 + n:
        fail(f"{path}: expected {8 + n} bytes, found {len(data)}")
    labels = data[8:]
    if any(label >= CLASSES for label in labels):
        fail(f"{path}: label not below {CLASSES}")
    return labels


def write_gz(path, payload):
    # mtime=0 and no file name in the header: reproducible output.
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, compresslevel=9, mtime=0))


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SOURCE
    os.makedirs(OUT_DIR, exist_ok=True)
    for images_name, labels_name, per_class in SPLITS:
        images_path = os.path.join(source, images_name)
        labels_path = os.path.join(source, labels_name)
        n, rows, cols, pixels = parse_images(images_path, read_gz(images_path))
        labels = parse_labels(labels_path, read_gz(labels_path))
        if len(labels) != n:
            fail(f"{labels_path}: {len(labels)} labels for {n} images")

        taken = [0] * CLASSES
        keep = []
        for i, label in enumerate(labels):
            if taken[label] < per_class:
                taken[label] += 1
                keep.append(i)
        short = [c for c in range(CLASSES) if taken[c] < per_class]
        if short:
            fail(f"{labels_path}: classes {short} have fewer than {per_class} images")

        size = rows * cols
        out_images = bytearray(struct.pack(">IIII", IMAGES_MAGIC, len(keep), rows, cols))
        for i in keep:
            out_images += pixels[i * size:(i + 1) * size]
        out_labels = bytearray(struct.pack(">II", LABELS_MAGIC, len(keep)))
        out_labels += bytes(labels[i] for i in keep)

        write_gz(os.path.join(OUT_DIR, images_name), bytes(out_images))
        write_gz(os.path.join(OUT_DIR, labels_name), bytes(out_labels))
        print(f"{images_name}: kept {len(keep)} of {n} images ({per_class} per class)")


if __name__ == "__main__":
    main()
