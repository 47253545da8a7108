"""Trains a small locally-connected network on real handwritten digits, next to a Conv2d one.

The data is scikit-learn's bundled digits set: 1,797 8x8 images of handwritten digits 0-9 by
43 people (the UCI "optdigits" test set), shipped inside scikit-learn, so nothing is downloaded.
Both networks have the same shape; only the weight sharing differs. The run prints each
model's test accuracy and saves the loss and accuracy curves as a PNG.

    python examples/train_digits.py                  # about 10 s on a 2-core CPU
    python examples/train_digits.py --device cuda --epochs 40 --plot curves.png

The curves go to examples/results/train_digits.png (ignored by git) unless --plot says where.

Needs the `examples` extra: scikit-learn, matplotlib, tqdm.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import lc_cuda


def load_digits_split(test_fraction: float, seed: int):
    """(train_x, train_y, test_x, test_y): images (N, 1, 8, 8) scaled to [0, 1], a split that
    keeps each digit's share the same in both parts."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def make_model(kind: str) -> nn.Sequential:
    """Two 3x3 layers (the second with stride 2) and a linear classifier, with its
    convolutions either locally connected or shared."""

    def layer(in_channels, out_channels, input_size, stride):
        if kind == "local":
            return lc_cuda.LocallyConnected2d(
                in_channels, out_channels, input_size, 3, stride=stride, padding=1
            )
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)

    return nn.Sequential(
        layer(1, 16, 8, 1),
        nn.ReLU(),
        layer(16, 32, 8, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 4 * 4, 10),
    )


def accuracy(model: nn.Module, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def train(kind: str, data, epochs: int, batch_size: int, lr: float, device, seed: int):
    from tqdm import tqdm

    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = (t.to(device) for t in data)
    model = make_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    history = {"loss": [], "test_accuracy": []}
    progress = tqdm(range(epochs), desc=f"{kind:>5}", unit="epoch")
    for _ in progress:
        model.train()
        order = torch.randperm(len(train_y), device=device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        history["loss"].append(total / len(order))
        history["test_accuracy"].append(accuracy(model, test_x, test_y))
        progress.set_postfix(
            loss=f"{history['loss'][-1]:.3f}", test_acc=f"{history['test_accuracy'][-1]:.3f}"
        )
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "history": history,
        "test_accuracy": history["test_accuracy"][-1],
        "parameters": parameters,
    }


# Inside the repository, where git ignores it (.gitignore), wherever the example is run from.
DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "train_digits.png"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, result in results.items():
        epochs = range(1, len(result["history"]["loss"]) + 1)
        label = f"{kind} ({result['parameters']:,} parameters)"
        loss_axes.plot(epochs, result["history"]["loss"], label=label)
        accuracy_axes.plot(epochs, result["history"]["test_accuracy"], label=label)
    loss_axes.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    accuracy_axes.set_ylim(top=1.0)
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("scikit-learn digits: LocallyConnected2d vs Conv2d")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--plot", default=str(DEFAULT_PLOT), help=f"where to save the curves ({DEFAULT_PLOT})"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    data = load_digits_split(test_fraction=0.25, seed=args.seed)
    print(f"digits: {len(data[1])} training and {len(data[3])} test images, device {args.device}")
    results = {}
    for kind in ("local", "conv"):
        start = time.perf_counter()
        results[kind] = train(
            kind, data, args.epochs, args.batch_size, args.lr, torch.device(args.device), args.seed
        )
        results[kind]["seconds"] = time.perf_counter() - start
    for kind, name in (("local", "LocallyConnected2d"), ("conv", "Conv2d")):
        result = results[kind]
        print(
            f"{name:>18}: test accuracy {result['test_accuracy']:.4f}, "
            f"{result['parameters']:,} parameters, {result['seconds']:.1f} s"
        )
    plot(results, args.plot)
    print(f"curves saved to {args.plot}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == "__main__":
    main()
