"""onnxruntime (CPU) on lc_cuda's ONNX export, beside lc_cuda's own CPU path, in one run.

    python benchmarks/onnx_bench.py [--batch 8] [--threads 2] [--repeats 10] [--input-size 152]

Exports DeepFace (random weights) and its locally-connected layers L4, L5 and L6, one by one,
with torch.onnx.export(dynamo=True), checks each onnxruntime output against lc_cuda's, then
times both methods interleaved (one call of each per round, so that load from other processes
hits both alike) and prints the medians and the ratio onnxruntime / lc_cuda. Both use the same
number of threads. Needs the `export` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime
import torch

import lc_cuda
from lc_cuda.models import DeepFace


def export(model, example, path: Path) -> None:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
        )
    program.save(str(path))


def session(path: Path, threads: int):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--input-size", type=int, default=152, help="DeepFace's input size")
    parser.add_argument("--num-classes", type=int, default=8631)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DeepFace(num_classes=args.num_classes, input_size=args.input_size).eval()
    faces = torch.randn(args.batch, 3, args.input_size, args.input_size)
    with torch.no_grad():
        x = torch.relu(model.C3(model.M2(torch.relu(model.C1(faces)))))
        layer_inputs = {"L4": x}
        layer_inputs["L5"] = torch.relu(model.L4(x))
        layer_inputs["L6"] = torch.relu(model.L5(layer_inputs["L5"]))
    cases = [(name, getattr(model, name), x) for name, x in layer_inputs.items()]
    cases.append(("DeepFace", model, faces))
    print(
        f"lc_cuda {lc_cuda.__version__} (CPU path), torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; batch {args.batch}, {args.threads} threads, float32; "
        f"medians of {args.repeats} interleaved rounds"
    )
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        for name, module, input in cases:
            path = Path(directory) / f"{name}.onnx"
            start = time.perf_counter()
            export(module, input, path)
            ort_session = session(path, args.threads)
            setup_s = time.perf_counter() - start
            feed = {ort_session.get_inputs()[0].name: input.numpy()}
            expected = module(input)
            (got,) = ort_session.run(None, feed)
            error = ((torch.from_numpy(got) - expected).abs().max() / expected.abs().max()).item()
            if not error <= 1e-4:
                raise SystemExit(f"{name}: onnxruntime differs from lc_cuda by {error:.1e}")
            methods = {
                "lc_cuda": lambda module=module, input=input: module(input),
                "onnxruntime": lambda s=ort_session, feed=feed: s.run(None, feed),
            }
            for run in methods.values():  # warm-up
                run()
            times = {method: [] for method in methods}
            for _ in range(args.repeats):
                for method, run in methods.items():
                    start = time.perf_counter()
                    run()
                    times[method].append((time.perf_counter() - start) * 1e3)
            medians = {method: statistics.median(values) for method, values in times.items()}
            ratio = medians["onnxruntime"] / medians["lc_cuda"]
            print(
                f"{name:9s} lc_cuda {medians['lc_cuda']:9.2f} ms  onnxruntime "
                f"{medians['onnxruntime']:9.2f} ms  ratio {ratio:5.2f}  "
                f"(rel. error {error:.1e}; export + session {setup_s:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
