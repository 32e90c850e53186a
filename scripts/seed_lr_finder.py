"""The seed example as its users write it today, with torch-lr-finder: the baseline of bench_startup.py.

The classic MNIST CNN, SGD(lr=0.001, momentum=0.5), NLLLoss, batch 256, torchvision's MNIST
(ToTensor + Normalize) in a DataLoader, ``range_test(end_lr=10, num_iter=100)`` with the
exponential step mode, the plot saved to a PNG, ``reset()``. No tracking.

    .venv/bin/python scripts/seed_lr_finder.py --root ../shared/data/mnist-t10k-split --out /tmp/seed.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch_lr_finder import LRFinder  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402


class Net(nn.Module):
    """conv 1->10 k5, conv 10->20 k5 + Dropout2d, fc 320->50, fc 50->10, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--out", default="lr_finder.png")
    parser.add_argument("--num-iter", type=int, default=100)
    args = parser.parse_args()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(args.root, train=True, download=False, transform=transform)
    loader = DataLoader(train, batch_size=256, shuffle=True)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.5)
    finder = LRFinder(model, optimizer, nn.NLLLoss(), device="cpu")
    finder.range_test(loader, end_lr=10, num_iter=args.num_iter, step_mode="exp")
    ax, lr = finder.plot(suggest_lr=True)
    ax.figure.savefig(args.out)
    plt.close(ax.figure)
    finder.reset()
    print(f"suggested lr {lr}")


if __name__ == "__main__":
    main()
