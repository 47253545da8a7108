"""Paired timing of DeepID2 conv3's geometry (benchmarks/cases.py) in its three forms, locally
shared in 2x2 regions, shared over the whole output, and unshared, against F.conv2d on the same
shapes: the four calls interleaved in every round, so that each round's ratios compare calls made
under the same machine state (on a shared machine whole runs of one case can land in a slower
state; the ratios per round are immune to that). Prints the medians and the median of each
round's ratio, forward and forward+backward.

    python benchmarks/paired_shared.py [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from cases import CASES_BY_NAME

import lc_cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    case = CASES_BY_NAME["deepid2_conv3_unshared"]
    batch, out = case.batch, case.out_sizes
    x = randn(batch, case.in_channels, *case.sizes)
    grad_output = randn(batch, case.out_channels, *out)
    bank = (case.out_channels, case.in_channels, case.kernel, case.kernel)
    layers = {}
    for name in ("deepid2_conv3", "deepid2_conv3_whole", "deepid2_conv3_unshared"):
        shared = CASES_BY_NAME[name]
        regions = shared.region_sizes
        weight, bias = randn(*regions, *bank), randn(case.out_channels, *regions)
        layers[name] = (lc_cuda.local_conv2d, weight, bias, shared.arguments())
    layers["F.conv2d"] = (F.conv2d, randn(*bank), randn(case.out_channels), {})

    def call(name, backward):
        function, weight, bias, arguments = layers[name]
        leaves = [t.detach().requires_grad_(backward) for t in (x, weight, bias)]
        start = time.perf_counter()
        if backward:
            torch.autograd.grad(function(*leaves, **arguments), leaves, grad_output)
        else:
            with torch.no_grad():
                function(*leaves, **arguments)
        return (time.perf_counter() - start) * 1e3

    for direction, backward in (("forward", False), ("forward+backward", True)):
        for name in layers:  # warm-up
            call(name, backward)
        rounds = [{name: call(name, backward) for name in layers} for _ in range(args.rounds)]
        print(f"{direction} ({args.rounds} rounds, {args.threads} threads), median ms:")
        for name in layers:
            print(f"  {name:24s} {statistics.median(r[name] for r in rounds):8.2f}")
        for a, b in (
            ("deepid2_conv3", "deepid2_conv3_unshared"),
            ("deepid2_conv3_whole", "deepid2_conv3_unshared"),
            ("deepid2_conv3_whole", "F.conv2d"),
        ):
            ratio = statistics.median(r[a] / r[b] for r in rounds)
            print(f"  {a} / {b}: {ratio:.2f} (median of the rounds' ratios)")


if __name__ == "__main__":
    main()
