"""Write scikit-learn's diabetes regression set (442 patients, 10 columns) as one .npz file.

    python make_tensors.py diabetes.npz

x is standardized with the training split's statistics; y (disease progression after a year) is
scaled the same way and stored as (N, 1), the shape the model returns. The last 20% is validation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def diabetes_arrays(val_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """x_train, y_train, x_val, y_val as float32, standardized on the training split."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].reshape(-1, 1)
    split = int(round(len(x) * (1 - val_fraction)))
    x_mean, x_std, y_mean, y_std = x[:split].mean(0), x[:split].std(0), y[:split].mean(), y[:split].std()
    x, y = (x - x_mean) / x_std, (y - y_mean) / y_std
    return {"x_train": x[:split].astype(np.float32), "y_train": y[:split].astype(np.float32),
            "x_val": x[split:].astype(np.float32), "y_val": y[split:].astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the .npz file to write")
    args = parser.parse_args()
    arrays = diabetes_arrays()
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
