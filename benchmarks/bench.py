"""Times lc_cuda against the unfold + matmul snippet users write, on layers from real models.

    python benchmarks/bench.py            # every case, forward and forward+backward
    python benchmarks/bench.py --quick    # fewer repeats, the small cases only

On a machine without a GPU the batch is cut to --cpu-batch so the run takes seconds. Each
method's output is checked against lc_cuda.unfold_local_conv2d before it is timed; a mismatch
fails the run. The last lines give, per dtype and direction, the geometric mean over the cases
of each method's speed-up over the fallback.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

import lc_cuda


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    source: str

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


CASES = [
    Case("deepface_L4", 128, 16, 63, 16, 9, 1, 0, "DeepFace"),
    Case("deepface_L5", 128, 16, 55, 16, 7, 2, 0, "DeepFace"),
    Case("deepface_L6", 128, 16, 25, 16, 5, 1, 0, "DeepFace"),
    Case("convnet_local3", 128, 64, 6, 64, 3, 1, 1, "cuda-convnet CIFAR-10 layers-conv-local"),
    Case("yolov1_local", 64, 1024, 7, 256, 3, 1, 1, "YOLOv1 [local]"),
    Case("lc_resnet_stem", 32, 3, 224, 64, 7, 2, 3, "locally-connected ResNet stem"),
    Case("cunn232_c1", 64, 1, 64, 16, 3, 1, 1, "Torch cunn regression case"),
    Case("mid_32x32_c64", 64, 64, 32, 64, 3, 1, 1, "mid-size map"),
    Case("wide_16x16_c128_k1", 256, 128, 16, 128, 1, 1, 0, "per-pixel linear"),
]
QUICK_CASES = {"deepface_L6", "convnet_local3", "cunn232_c1", "wide_16x16_c128_k1"}


def naive_snippet(input, weight, bias, stride, padding):
    """The unfold + matmul layer found in the wild: F.unfold, then one einsum over locations."""
    out_h, out_w, out_channels = weight.shape[:3]
    columns = F.unfold(input, weight.shape[-2:], padding=padding, stride=stride)  # (N, K, L)
    filters = weight.reshape(out_h * out_w, out_channels, -1)  # (L, C_out, K)
    out = torch.einsum("nkl,lok->nol", columns, filters).reshape(-1, out_channels, out_h, out_w)
    return out + bias


METHODS = {
    "lc_cuda": lambda x, w, b, s, p: lc_cuda.local_conv2d(x, w, b, s, p),
    "lc_cuda_unfold": lambda x, w, b, s, p: lc_cuda.unfold_local_conv2d(x, w, b, s, p),
    "naive_snippet": naive_snippet,
}


def make_tensors(case: Case, batch: int, dtype, device):
    shape = (case.out_size, case.out_size, case.out_channels, case.in_channels)
    input = torch.randn(batch, case.in_channels, case.size, case.size, device=device, dtype=dtype)
    weight = torch.randn(*shape, case.kernel, case.kernel, device=device, dtype=dtype)
    weight /= (case.in_channels * case.kernel**2) ** 0.5
    bias = torch.randn(case.out_channels, case.out_size, case.out_size, device=device, dtype=dtype)
    return [t.requires_grad_() for t in (input, weight, bias)]


def run_once(method, tensors, case: Case, direction: str):
    out = method(*tensors, case.stride, case.padding)
    if direction == "forward+backward":
        return torch.autograd.grad(out, tensors, torch.ones_like(out))
    return (out,)


def median_ms(function, repeats: int, device) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            function()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# Largest error relative to the reference's scale that a method may show, per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def cross_check(results, reference) -> float:
    """The largest error relative to the reference's scale, over all returned tensors."""
    worst = 0.0
    for got, want in zip(results, reference):
        scale = want.detach().abs().max().clamp_min(1e-30)
        worst = max(worst, ((got.detach() - want.detach()).abs().max() / scale).item())
    return worst


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases, fewer repeats")
    parser.add_argument("--cases", nargs="+", choices=[c.name for c in CASES])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--directions",
        nargs="+",
        choices=["forward", "forward+backward"],
        default=["forward", "forward+backward"],
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "float64", "float16", "bfloat16"],
        default=["float32"],
    )
    parser.add_argument("--cpu-batch", type=int, default=4, help="batch size without a GPU")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", help="write every measurement to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = args.repeats or (5 if args.quick else 20)
    names = args.cases or [c.name for c in CASES if not args.quick or c.name in QUICK_CASES]
    cases = [c for c in CASES if c.name in names]
    info = lc_cuda.build_info()
    print(
        f"lc_cuda on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})"
        f", CUDA kernels {'present' if info['cuda_kernels'] else 'absent'}, median of {repeats}"
    )
    header = f"{'case':<20} {'dtype':<9} {'direction':<17} {'N':>4} "
    print(header + "".join(f"{m:>16}" for m in args.methods))
    records, failures = [], 0
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for case in cases:
            batch = case.batch if device.type == "cuda" else min(case.batch, args.cpu_batch)
            tensors = make_tensors(case, batch, dtype, device)
            for direction in args.directions:
                reference = run_once(METHODS["lc_cuda_unfold"], tensors, case, direction)
                cells = []
                for name in args.methods:
                    method = METHODS[name]
                    error = cross_check(run_once(method, tensors, case, direction), reference)
                    record = dict(
                        case=case.name,
                        dtype=dtype_name,
                        direction=direction,
                        batch=batch,
                        method=name,
                        error=error,
                    )
                    if error > TOLERANCE[dtype]:
                        failures += 1
                        cells.append(f"MISMATCH {error:.1e}")
                    else:
                        timed = partial(run_once, method, tensors, case, direction)
                        record["ms"] = median_ms(timed, repeats, device)
                        cells.append(f"{record['ms']:9.3f} ms")
                    records.append(record)
                line = f"{case.name:<20} {dtype_name:<9} {direction:<17} {batch:>4} "
                print(line + "".join(f"{c:>16}" for c in cells), flush=True)
            del tensors
    print("\ngeometric mean speed-up over lc_cuda_unfold (higher is faster):")
    for dtype_name in args.dtypes:
        for direction in args.directions:
            times = {
                (r["case"], r["method"]): r["ms"]
                for r in records
                if r["dtype"] == dtype_name and r["direction"] == direction and "ms" in r
            }
            cells = []
            for name in args.methods:
                ratios = [
                    times[(c.name, "lc_cuda_unfold")] / times[(c.name, name)]
                    for c in cases
                    if (c.name, name) in times and (c.name, "lc_cuda_unfold") in times
                ]
                cells.append(f"{name} {geometric_mean(ratios):.2f}x")
            print(f"  {dtype_name:<9} {direction:<17} " + ", ".join(cells))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {"device": str(device), "build_info": info, "records": records}, file, indent=1
            )
    if failures:
        print(f"{failures} measurement(s) disagreed with the fallback", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
