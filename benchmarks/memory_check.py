"""Peak extra host memory of lc_cuda's CPU kernels and of its unfold fallback on one layer at a
large batch, forward and forward+backward, against the CPU kernels' scratch bound.

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/memory_check.py deepface_L4 128

bench.py runs it in its own process with that variable set, so that glibc serves every large
block from a fresh mapping and the resident-set high-water mark (host_memory.py) sees it. Prints
one JSON object: per method and direction the peak extra bytes (outputs included), the bytes of
the outputs, and the scratch budget (LC_CUDA_CPU_SCRATCH_MB, 256 MiB unless set).
"""

from __future__ import annotations

import json
import os
import sys

import host_memory
import torch
from cases import CASES_BY_NAME

import lc_cuda

METHODS = {"lc_cuda": lc_cuda.local_conv2d, "lc_cuda_unfold": lc_cuda.unfold_local_conv2d}


def measure(case_name: str, batch: int) -> dict:
    case = CASES_BY_NAME[case_name]
    generator = torch.Generator().manual_seed(0)
    size, out = case.size, case.out_size
    input = torch.randn(batch, case.in_channels, size, size, generator=generator)
    weight = torch.randn(
        out,
        out,
        case.out_channels,
        case.in_channels,
        case.kernel,
        case.kernel,
        generator=generator,
    )
    bias = torch.randn(case.out_channels, out, out, generator=generator)
    grad_output = torch.randn(batch, case.out_channels, out, out, generator=generator)
    leaves = [t.requires_grad_() for t in (input, weight, bias)]
    arguments = (case.stride, case.padding)
    output_bytes = grad_output.nbytes
    result = {
        "case": case_name,
        "batch": batch,
        "budget_bytes": int(float(os.environ.get("LC_CUDA_CPU_SCRATCH_MB") or 256) * 2**20),
        "outputs_bytes": {
            "forward": output_bytes,
            "forward+backward": output_bytes + sum(t.nbytes for t in leaves),
        },
        "peak_extra_bytes": {},
    }
    for name, function in METHODS.items():

        def forward(function=function):
            with torch.no_grad():
                return function(*leaves, *arguments)

        def forward_backward(function=function):
            return torch.autograd.grad(function(*leaves, *arguments), leaves, grad_output)

        forward_backward()  # first call: one-time allocations are not the layer's
        result["peak_extra_bytes"][name] = {
            "forward": min(host_memory.peak_extra_bytes(forward) for _ in range(2)),
            "forward+backward": min(
                host_memory.peak_extra_bytes(forward_backward) for _ in range(2)
            ),
        }
    return result


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
