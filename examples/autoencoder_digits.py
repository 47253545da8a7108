"""Trains a small convolutional autoencoder whose decoder is locally connected
(LocallyConnectedTranspose2d), next to the same autoencoder with a ConvTranspose2d decoder.

The data is scikit-learn's bundled digits set (1,797 8x8 images, nothing downloaded), as in
train_digits.py. Both autoencoders share the encoder's shape (two Conv2d, a linear layer to a
16-number code) and the decoder's (a linear layer, then two transposed layers back to 8x8); only
the decoder's weight sharing differs. The run prints each model's reconstruction error (mean
squared error per pixel, pixels in [0, 1]) on the training and test images, next to the error
of always answering the training images' mean, and saves test digits against their
reconstructions as a PNG.

    python examples/autoencoder_digits.py              # under a minute on a 2-core CPU
    python examples/autoencoder_digits.py --epochs 80 --plot reconstructions.png

The picture goes to examples/results/autoencoder_digits.png (ignored by git) unless --plot says
where.

Needs the `examples` extra: scikit-learn, matplotlib, tqdm.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from train_digits import load_digits_split

import lc_cuda

CODE_SIZE = 16


def make_autoencoder(kind: str) -> nn.Sequential:
    """8x8 digit -> 16 numbers -> 8x8 digit. The decoder's two transposed layers (4x4 -> 8x8 at
    stride 2, then 8x8 -> 8x8) are locally connected ('local') or convolutions ('conv')."""

    def transposed(in_channels, out_channels, input_size, stride):
        output_padding = stride - 1  # doubles 4x4 to 8x8 at stride 2, keeps 8x8 at stride 1
        if kind == "local":
            return lc_cuda.LocallyConnectedTranspose2d(
                in_channels, out_channels, input_size, 3, stride, 1, output_padding
            )
        return nn.ConvTranspose2d(in_channels, out_channels, 3, stride, 1, output_padding)

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, CODE_SIZE),
        nn.Linear(CODE_SIZE, 32 * 4 * 4),
        nn.ReLU(),
        nn.Unflatten(1, (32, 4, 4)),
        transposed(32, 16, 4, 2),
        nn.ReLU(),
        transposed(16, 1, 8, 1),
        nn.Sigmoid(),
    )


def reconstruction_error(model: nn.Module, images) -> float:
    """Mean squared error per pixel."""
    model.eval()
    with torch.no_grad():
        return nn.functional.mse_loss(model(images), images).item()


def train(kind: str, images, epochs: int, batch_size: int, lr: float, device, seed: int):
    from tqdm import tqdm

    torch.manual_seed(seed)
    train_x, test_x = (t.to(device) for t in images)
    model = make_autoencoder(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    history = {"train_error": [], "test_error": []}
    progress = tqdm(range(epochs), desc=f"{kind:>5}", unit="epoch")
    for _ in progress:
        model.train()
        order = torch.randperm(len(train_x), device=device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = train_x[order[start : start + batch_size]]
            loss = nn.functional.mse_loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        history["train_error"].append(total / len(order))
        history["test_error"].append(reconstruction_error(model, test_x))
        progress.set_postfix(
            train=f"{history['train_error'][-1]:.4f}", test=f"{history['test_error'][-1]:.4f}"
        )
    result = {
        "history": history,
        "train_error": reconstruction_error(model, train_x),  # the trained model, in eval mode
        "test_error": history["test_error"][-1],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, result


# Inside the repository, where git ignores it (.gitignore), wherever the example is run from.
DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "autoencoder_digits.png"


def plot(models: dict, results: dict, test_x, test_y, path: str) -> None:
    """The first test image of each digit (top row) over each model's reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = torch.stack([test_x[(test_y == digit).nonzero()[0, 0]] for digit in range(10)])
    rows = {"input": digits}
    for kind, model in models.items():
        model.eval()
        with torch.no_grad():
            reconstructed = model(digits.to(next(model.parameters()).device)).cpu()
        name = "LocallyConnectedTranspose2d" if kind == "local" else "ConvTranspose2d"
        rows[f"{name}\ntest MSE {results[kind]['test_error']:.4f}"] = reconstructed
    figure, axes = plt.subplots(len(rows), 10, figsize=(10, 1.1 * len(rows) + 0.6))
    for row, (label, images) in zip(axes, rows.items()):
        for axis, image in zip(row, images):
            axis.imshow(image[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle("scikit-learn digits: test inputs and their reconstructions (16-number code)")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # Batches of 32 8x8 images make operations too small to split: on 2 shared cores, 2 threads
    # took 7x as long per step as 1 (they wait on each other at every operation).
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--plot", default=str(DEFAULT_PLOT), help=f"where to save the picture ({DEFAULT_PLOT})"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_x, _, test_x, test_y = load_digits_split(test_fraction=0.25, seed=args.seed)
    device = torch.device(args.device)
    print(f"digits: {len(train_x)} training and {len(test_x)} test images, device {device}")
    mean_image = train_x.mean(0, keepdim=True)
    results = {
        "mean_image": {
            "train_error": nn.functional.mse_loss(mean_image.expand_as(train_x), train_x).item(),
            "test_error": nn.functional.mse_loss(mean_image.expand_as(test_x), test_x).item(),
        }
    }
    models = {}
    for kind in ("local", "conv"):
        start = time.perf_counter()
        models[kind], results[kind] = train(
            kind, (train_x, test_x), args.epochs, args.batch_size, args.lr, device, args.seed
        )
        results[kind]["seconds"] = time.perf_counter() - start
    for kind, name in (
        ("local", "LocallyConnectedTranspose2d decoder"),
        ("conv", "ConvTranspose2d decoder"),
        ("mean_image", "the training mean image"),
    ):
        result = results[kind]
        line = (
            f"{name:>35}: reconstruction MSE train {result['train_error']:.4f}, "
            f"test {result['test_error']:.4f}"
        )
        if "parameters" in result:
            line += f", {result['parameters']:,} parameters, {result['seconds']:.1f} s"
        print(line)
    plot(models, results, test_x, test_y, args.plot)
    print(f"reconstructions saved to {args.plot}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == "__main__":
    main()
