"""Times JAX's lax.conv_general_dilated_local, in its own process (bench.py starts it, so that
JAX and torch do not share the GPU's memory pools). Reads a JSON task list, writes JSON results.

    python benchmarks/jax_runner.py tasks.json results.json

Each task names an .npz with float32 arrays input (NCHW; NCH in 1D, NCDHW in 3D), rhs (OIHW
local layout, likewise), bias (C_out, *out), grad_output and reference (the fallback's or the
oracle's output), and the geometry (the same kernel, stride and padding in every dimension).
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main(tasks_path: str, results_path: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    with open(tasks_path) as file:
        tasks = json.load(file)
    device = jax.devices()[0]
    results = []
    for task in tasks:
        arrays = np.load(task["npz"])
        dtype = (
            jnp.bfloat16
            if task["dtype"] == "bfloat16"
            else (jnp.float16 if task["dtype"] == "float16" else jnp.float32)
        )
        x, rhs, bias, grad_output = (
            jax.device_put(jnp.asarray(arrays[name], dtype=dtype), device)
            for name in ("input", "rhs", "bias", "grad_output")
        )
        k, s, p = task["kernel"], task["stride"], task["padding"]
        dims = task.get("dims", 2)
        spatial = {1: "H", 2: "HW", 3: "DHW"}[dims]  # lc_cuda.convert.to_jax's default letters
        exact = task["dtype"] == "float32"
        precision = lax.Precision.HIGHEST if exact else lax.Precision.DEFAULT

        def layer(x, rhs, bias, k=k, s=s, p=p, dims=dims, spatial=spatial, precision=precision):
            out = lax.conv_general_dilated_local(
                x,
                rhs,
                (s,) * dims,
                [(p, p)] * dims,
                (k,) * dims,
                dimension_numbers=("NC" + spatial, "OI" + spatial, "NC" + spatial),
                precision=precision,
            )
            return out + bias[None]

        def gradients(argnums, layer=layer, grad_output=grad_output):
            def pullback(*operands):
                _, vjp = jax.vjp(layer, *operands)
                grads = vjp(grad_output)
                return tuple(grads[i] for i in argnums)

            return jax.jit(pullback)

        functions = {
            "forward": jax.jit(layer),
            "forward+backward": gradients((0, 1, 2)),
            "grad_input": gradients((0,)),
            "grad_weight": gradients((1, 2)),
        }
        reference = arrays["reference"]
        out = np.asarray(functions["forward"](x, rhs, bias).astype(jnp.float32))
        error = float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-30))
        for direction in task["directions"]:
            record = {
                "case": task["case"],
                "dtype": task["dtype"],
                "direction": direction,
                "method": "jax",
                "error": error,
            }
            try:
                function = functions[direction]
                for _ in range(3):  # compile and warm up
                    jax.block_until_ready(function(x, rhs, bias))
                times = []
                for _ in range(task["repeats"]):
                    start = time.perf_counter()
                    jax.block_until_ready(function(x, rhs, bias))
                    times.append((time.perf_counter() - start) * 1e3)
                record["ms"] = statistics.median(times)
                stats = device.memory_stats() or {}
                record["peak_bytes"] = stats.get("peak_bytes_in_use")
            except Exception as failure:  # reported, and the run goes on
                record["status"] = f"failed: {type(failure).__name__}: {str(failure)[:200]}"
            results.append(record)
        del x, rhs, bias, grad_output
    with open(results_path, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
