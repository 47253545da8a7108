"""The machine's ceilings, measured in the same run as the kernels: copy bandwidth and matmul
rates per precision. A ceiling is what the machine reaches at best, so each is the fastest of
its calls, and a run measures them at its start and its end and keeps the better of each
(best_ceilings): on a shared host a measurement taken under another process's load had read the
copy bandwidth at 18 GB/s against 54 at a quieter hour, lowering the floors it set by as much and
flattering every ratio to them."""

from __future__ import annotations

import contextlib

import torch
from timing import timings_ms

# Precision keys: a dtype, and for float32 whether TF32 tensor cores may be used.
PRECISIONS = {
    "float32": torch.float32,
    "float32_tf32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@contextlib.contextmanager
def precision(key: str):
    """float32_tf32 allows TF32 in matmuls and cuDNN; every other key forbids it, so that
    float32 is exact (cuDNN allows TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    allow = key == "float32_tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield PRECISIONS[key]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _copy_GBps(device: torch.device, elements: int) -> float:
    source = torch.empty(elements, device=device).uniform_()
    target = torch.empty_like(source)
    calls = 20 if device.type == "cuda" else 10
    ms = min(timings_ms(lambda i: target.copy_(source), calls, device))
    return 2 * elements * source.element_size() / ms / 1e6  # bytes read and written


def measure_ceilings(device: torch.device, keys) -> dict:
    """{'copy_GBps': bytes read + written per second / 1e9, 'matmul_TFLOPs': {key: rate}}, each
    from its fastest call."""
    gpu = device.type == "cuda"
    elements = (1 << 28) if gpu else (1 << 25)  # 1 GiB or 128 MiB of float32
    ceilings = {"copy_GBps": _copy_GBps(device, elements), "matmul_TFLOPs": {}}
    n = 8192 if gpu else 1024
    rates = ceilings["matmul_TFLOPs"]
    # float32 first: a 16-bit rate below it is cut short (below).
    for key in sorted(keys, key=lambda k: k != "float32"):
        if key == "float32_tf32" and not gpu:
            continue  # no TF32 on the CPU
        with precision(key) as dtype:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            product = lambda i, a=a, b=b: a @ b  # noqa: E731
            ms = timings_ms(product, 1, device, warmup=1)[0]
            # A precision slower than float32 sets no floor of its own (floor_of takes
            # float32's rate then), so where one call after a warm-up reads below half of
            # float32's best (well clear of noise), that call is its measurement: on a Zen 3,
            # torch's bfloat16 product of this size took 2.2 s a call, 36 s of a 51 s quick run.
            if 2 * n**3 / ms / 1e9 >= rates.get("float32", 0.0) / 2:
                ms = min([ms, *timings_ms(product, 10 if gpu else 5, device)])
        rates[key] = 2 * n**3 / ms / 1e9
    return ceilings


def best_ceilings(measurements: list[dict]) -> dict:
    """The better of each ceiling over measure_ceilings' `measurements`."""
    return {
        "copy_GBps": max(m["copy_GBps"] for m in measurements),
        "matmul_TFLOPs": {
            key: max(m["matmul_TFLOPs"][key] for m in measurements)
            for key in measurements[0]["matmul_TFLOPs"]
        },
    }


def floor_of(bytes_: int, flops: int, ceilings: dict, key) -> float:
    """The roofline floor in ms. A 16-bit precision's products can always be computed by
    widening to float32, so its rate is at least float32's: on a CPU without bfloat16
    arithmetic (a Zen 3) torch's bfloat16 matmul read 0.001 TFLOP/s against float32's 0.14,
    which would have set floors that kernels widening to float beat."""
    rates = ceilings["matmul_TFLOPs"]
    # float32's where the run measured it (a run of 16-bit dtypes alone may not have).
    rate = max(rates.get(key) or 0.0, rates.get("float32") or 0.0)
    return max(bytes_ / (ceilings["copy_GBps"] * 1e6), flops / (rate * 1e9))
