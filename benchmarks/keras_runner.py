"""Times tf-keras LocallyConnected2D (implementations 1 and 2), in its own process (bench.py
starts it, as it does jax_runner.py, so that TensorFlow and torch share neither threads nor
allocators). Reads a JSON task list, writes JSON results.

    python benchmarks/keras_runner.py tasks.json results.json

Each task names an .npz with float32 arrays input (NCHW), kernel and bias (the layer's weights
for that implementation, from lc_cuda.convert.to_keras on the padded input), grad_output (NCHW)
and reference (the fallback's output), and the geometry. The layer runs channels_last after a
ZeroPadding2D where the case pads (Keras has no explicit padding); the input is transposed to
NHWC once, outside the timing.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main(tasks_path: str, results_path: str) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    with open(tasks_path) as file:
        tasks = json.load(file)
    if tasks and tasks[0].get("threads"):  # the same thread count as the torch methods
        tf.config.threading.set_intra_op_parallelism_threads(tasks[0]["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
    results = []
    for task in tasks:
        arrays = np.load(task["npz"])
        x = tf.constant(np.ascontiguousarray(arrays["input"].transpose(0, 2, 3, 1)))
        grad_output = tf.constant(np.ascontiguousarray(arrays["grad_output"].transpose(0, 2, 3, 1)))
        k, s, p = task["kernel"], task["stride"], task["padding"]
        layer = keras.layers.LocallyConnected2D(
            arrays["bias"].shape[-1], k, strides=s, implementation=task["implementation"]
        )
        padding = keras.layers.ZeroPadding2D(p) if p else None
        padded_shape = (x.shape[1] + 2 * p, x.shape[2] + 2 * p, x.shape[3])
        layer.build((None, *padded_shape))
        layer.set_weights([arrays["kernel"], arrays["bias"]])

        def model(x, layer=layer, padding=padding):
            return layer(padding(x) if padding is not None else x)

        @tf.function
        def forward(x, model=model):
            return model(x)

        @tf.function
        def forward_backward(x, model=model, layer=layer, grad_output=grad_output):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = model(x)
            return tape.gradient(out, [x, *layer.trainable_weights], output_gradients=grad_output)

        functions = {"forward": forward, "forward+backward": forward_backward}
        out = forward(x).numpy().transpose(0, 3, 1, 2)
        reference = arrays["reference"]
        error = float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-30))
        for direction in task["directions"]:
            record = {
                "case": task["case"],
                "dtype": task["dtype"],
                "direction": direction,
                "method": task["method"],
                "error": error,
            }
            if direction not in functions:
                record["status"] = "not measured (forward and forward+backward only)"
                results.append(record)
                continue
            try:
                function = functions[direction]
                for _ in range(2):  # trace and warm up
                    tf.nest.map_structure(lambda t: t.numpy(), function(x))
                times = []
                for _ in range(task["repeats"]):
                    start = time.perf_counter()
                    tf.nest.map_structure(lambda t: t.numpy(), function(x))
                    times.append((time.perf_counter() - start) * 1e3)
                record["ms"] = statistics.median(times)
            except Exception as failure:  # reported, and the run goes on
                record["status"] = f"failed: {type(failure).__name__}: {str(failure)[:200]}"
            results.append(record)
    with open(results_path, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
