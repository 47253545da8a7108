"""Calls every CUDA kernel of lc_cuda in every dtype on small shapes, for compute-sanitizer.

Every tile width (C_out and C_in of at most 16, 32 and more), both bias kinds, padding,
stride, dilation, a channels_last input and a batch that is not a multiple of the tile all
run; float16 and bfloat16 run twice, on the tensor-core kernels and with LC_CUDA_BACKEND=ffma,
and float32 twice, exact and with TF32 allowed.
Each result is compared with the CPU fallback, so the script also fails on wrong values.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/exercise_kernels.py
"""

import os
import sys

import torch

import lc_cuda

# n, c_in, (h, w), c_out, (kh, kw), stride, padding, dilation, bias
CASES = [
    (3, 2, (7, 6), 3, (3, 2), (1, 2), (1, 0), (1, 1), "shared"),
    (5, 20, (6, 7), 20, (2, 3), (2, 1), (0, 1), (2, 1), "per_location"),
    (2, 40, (5, 5), 40, (3, 3), (1, 1), (1, 1), (1, 1), None),
    (67, 1, (4, 4), 1, (1, 1), (1, 1), (0, 0), (1, 1), "per_location"),
    # tensor-core forward: three groups of 8 columns, a batch padded to 16, a partial last stage
    (9, 16, (9, 21), 18, (3, 3), (1, 1), (1, 1), (1, 2), "shared"),
]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def run(device, dtype, case, channels_last):
    n, c_in, (h, w), c_out, kernel, stride, padding, dilation, bias_kind = case
    generator = torch.Generator().manual_seed(0)
    out_h = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    input = torch.randn(n, c_in, h, w, generator=generator)
    weight = torch.randn(out_h, out_w, c_out, c_in, *kernel, generator=generator)
    bias_shape = {"shared": (c_out,), "per_location": (c_out, out_h, out_w), None: None}
    bias = torch.randn(bias_shape[bias_kind], generator=generator) if bias_kind else None
    input = input.to(device, dtype)
    if channels_last:
        input = input.to(memory_format=torch.channels_last)
    leaves = [t.to(device, dtype).requires_grad_() for t in (input, weight, bias) if t is not None]
    out = lc_cuda.local_conv2d(
        leaves[0], leaves[1], leaves[2] if bias is not None else None, stride, padding, dilation
    )
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    return [t.detach().double().cpu() for t in (out, *grads)]


def main() -> int:
    failures = 0
    # (dtype, LC_CUDA_BACKEND, TF32 allowed): every kernel, the FFMA ones in every dtype
    runs = [(dtype, "auto", False) for dtype in TOLERANCE] + [
        (torch.float16, "ffma", False),
        (torch.bfloat16, "ffma", False),
        (torch.float32, "auto", True),
    ]
    for dtype, backend, tf32 in runs:
        os.environ["LC_CUDA_BACKEND"] = backend
        torch.backends.cuda.matmul.allow_tf32 = tf32
        tolerance = 1e-2 if tf32 else TOLERANCE[dtype]
        for case in CASES:
            for channels_last in (False, True):
                got = run("cuda", dtype, case, channels_last)
                want = run("cpu", torch.float64, case, channels_last)
                for g, e in zip(got, want):
                    error = ((g - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
                    if error > tolerance:
                        failures += 1
                        print(
                            f"MISMATCH {dtype} {backend} tf32={tf32} {case} "
                            f"channels_last={channels_last}: {error:.3g}"
                        )
    torch.cuda.synchronize()
    print(f"exercised forward, grad_input and grad_weight: {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
