"""tf-keras LocallyConnected2D as a benchmark method: prepares its inputs and weights from the
benchmark's tensors and runs keras_runner.py in its own process, as run_jax does for JAX."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from runner_process import run_tasks

import lc_cuda
from lc_cuda import convert

HERE = Path(__file__).resolve().parent
# Implementation 2 multiplies by a dense (H, W, C_in, OH, OW, C_out) kernel masked to the windows;
# above this many bytes (float32) it is reported as skipped rather than run out of memory.
DENSE_KERNEL_LIMIT = 1.2 * 2**30


def keras_weights(case, tensors: dict, implementation: int) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a Keras layer on the padded input that computes the case's layer."""
    size = case.size + 2 * case.padding
    layer = lc_cuda.LocallyConnected2d(
        case.in_channels, case.out_channels, size, case.kernel, case.stride
    )
    with torch.no_grad():
        layer.weight.copy_(tensors["weight"].float().cpu())
        layer.bias.copy_(tensors["bias"].float().cpu())
    return convert.to_keras(layer, "channels_last", implementation)


def dense_kernel_bytes(case) -> int:
    size = case.size + 2 * case.padding
    return 4 * size**2 * case.in_channels * case.out_size**2 * case.out_channels


def run_keras(methods, cases, key, batch_of, directions, repeats, sets_of, threads) -> list[dict]:
    """Records of each Keras method in `methods` (names from methods.KERAS: implementation)."""
    records, tasks = [], []
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            tensors = sets_of(case)[0]
            reference = lc_cuda.unfold_local_conv2d(
                tensors["input"], tensors["weight"], tensors["bias"], case.stride, case.padding
            )
            for name, implementation in methods.items():
                base = {"case": case.name, "dtype": key, "method": name, "batch": batch_of(case)}
                if key != "float32":
                    records += [dict(base, direction=d, status="float32 only") for d in directions]
                    continue
                if implementation == 2 and dense_kernel_bytes(case) > DENSE_KERNEL_LIMIT:
                    gib = dense_kernel_bytes(case) / 2**30
                    status = f"skipped: dense kernel {gib:.1f} GiB"
                    records += [dict(base, direction=d, status=status) for d in directions]
                    continue
                kernel, bias = keras_weights(case, tensors, implementation)
                path = os.path.join(folder, f"{case.name}_{implementation}.npz")
                np.savez(
                    path,
                    input=tensors["input"].float().cpu().numpy(),
                    grad_output=tensors["grad_output"].float().cpu().numpy(),
                    kernel=kernel,
                    bias=bias,
                    reference=reference.float().cpu().numpy(),
                )
                tasks.append({
                    "case": case.name, "dtype": key, "method": name, "npz": path,
                    "implementation": implementation, "kernel": case.kernel,
                    "stride": case.stride, "padding": case.padding, "directions": directions,
                    "repeats": repeats, "threads": threads,
                })  # fmt: skip
        if not tasks:
            return records
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        results, failure = run_tasks(HERE / "keras_runner.py", tasks, folder, env)
        if failure:
            return records + [
                {"case": t["case"], "dtype": key, "direction": d, "method": t["method"],
                 "batch": batch_of_name(cases, batch_of, t["case"]), "status": f"failed: {failure}"}
                for t in tasks
                for d in directions
            ]  # fmt: skip
        for record in results:
            record["batch"] = batch_of_name(cases, batch_of, record["case"])
            records.append(record)
    return records


def batch_of_name(cases, batch_of, name: str) -> int:
    return batch_of(next(case for case in cases if case.name == name))
