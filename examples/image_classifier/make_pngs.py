"""Write a small ImageFolder tree of real digit images: <out>/{train,val}/<digit>/<n>.png (28x28, grayscale).

    python make_pngs.py images                         # from scikit-learn's bundled digits (no download)
    python make_pngs.py images --mnist ROOT            # from MNIST idx files in ROOT/MNIST/raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, upsampled to 28x28 uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR))
              for img in bunch.images]
    return np.pad(np.stack(images), ((0, 0), (4, 4), (4, 4))), bunch.target


def mnist_images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's test split (or whatever t10k files ROOT/MNIST/raw holds) as uint8 arrays."""
    raw = root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    return images, labels


def write_tree(out: Path, images: np.ndarray, labels: np.ndarray, per_class: int, val_per_class: int) -> int:
    """Write ``per_class`` training and ``val_per_class`` validation PNGs per class; returns the count."""
    written = 0
    for label in sorted(set(labels.tolist())):
        picks = np.flatnonzero(labels == label)[: per_class + val_per_class]
        for i, index in enumerate(picks):
            split = "train" if i < per_class else "val"
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{index}.png")
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the tree's root folder")
    parser.add_argument("--mnist", type=Path, help="a folder holding MNIST/raw (default: scikit-learn's digits)")
    parser.add_argument("--per-class", type=int, default=120, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=40, help="validation images per class")
    args = parser.parse_args()
    images, labels = mnist_images(args.mnist) if args.mnist else digits_images()
    count = write_tree(args.out, images, labels, args.per_class, args.val_per_class)
    print(f"wrote {count} PNGs under {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
