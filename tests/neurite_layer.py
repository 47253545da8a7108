"""Runs neurite's TensorFlow LocallyConnected3D on the cases tests/test_convert.py gives and saves
its weights and outputs: python neurite_layer.py CASES.json RESULTS.npz

Its own process, because neurite 0.1 and 0.2 (the releases with the TensorFlow layer) predate
Keras 3 and Python 3.11, and need two accommodations before they import:
- TF_USE_LEGACY_KERAS=1, so that tf.keras is tf-keras (Keras 2), as neurite expects
  (with Keras 3, neurite.tf.metrics fails on `from tensorflow.keras.losses import
  mean_absolute_error`). It must be set before TensorFlow is first imported.
- inspect.getargspec, which Python 3.11 removed and neurite.tf.modelio calls at import time,
  given back as the 4 first fields of inspect.getfullargspec (what it returned).
The layer's own code runs unchanged.
"""

import inspect
import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not hasattr(inspect, "getargspec"):
    inspect.getargspec = lambda function: inspect.getfullargspec(function)[:4]

import neurite
import numpy as np


def run(case: dict, rng: np.random.Generator) -> dict:
    layer = neurite.layers.LocallyConnected3D(
        case["filters"],
        case["kernel_size"],
        strides=case["strides"],
        padding=case["padding"],
        data_format=case["data_format"],
        implementation=case["implementation"],
        use_bias=case["use_bias"],
        kernel_initializer="random_normal",
        bias_initializer="random_normal",
    )
    x = rng.standard_normal((2, *case["input_shape"])).astype(np.float32)
    output = np.asarray(layer(x))
    weights = layer.get_weights()
    result = {"x": x, "output": output, "kernel": weights[0]}
    if case["use_bias"]:
        result["bias"] = weights[1]
    if case["implementation"] == 2:
        result["kernel_mask"] = np.asarray(layer.kernel_mask)
    return result


def main(cases_path: str, results_path: str) -> None:
    with open(cases_path) as file:
        cases = json.load(file)
    rng = np.random.default_rng(0)
    arrays = {"neurite_version": np.array(neurite.__version__)}
    for index, case in enumerate(cases):
        for key, value in run(case, rng).items():
            arrays[f"{index}/{key}"] = value
    np.savez(results_path, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
