"""lc_cuda against the unfold + matmul snippet, torch.compile, JAX, cuDNN and the roofline.

    python benchmarks/bench.py                 # every case, method, dtype and direction
    python benchmarks/bench.py --quick         # four small cases, fewer repeats

On a GPU every method runs in float32 (exact and with TF32 allowed), bfloat16 and float16. On a
machine without one it runs the CPU issue's seven cases at the batches of cases.CPU_BATCHES
(--cpu-batch overrides them), float32 and bfloat16, and compares lc_cuda (on the best products
the CPU has, and forced onto its AVX2 and its BLAS products: lc_cuda_avx2, lc_cuda_blas) with the
fallback, the snippet eager and compiled, JAX and tf-keras LocallyConnected2D (implementations 1
and 2, in their own process) where those are installed, then measures the extra memory of
DeepFace L4 at batch 128 for lc_cuda and the fallback (memory_check.py, in its own process);
--quick compares lc_cuda with the fallback and the snippet at batch 4 in about a minute.
--threads sets torch's (and Keras') thread count.

The rest of the operator family (cases.FAMILY_CASES: the transposed decoder layers, block
sharing, groups, depthwise, 3D volumes and a long 1D layer) runs where --cases names it, on the
CPU at cases.FAMILY_CPU_BATCHES, against methods.FAMILY_METHODS (lc_cuda's op for the case, its
fallback, the unfold/fold snippet with the weights expanded to every location, eager and
compiled, and F.conv where a case shares one filter bank over its whole output) and JAX where it
takes the case (1D, 2D and 3D, no groups, sharing or transpose); each is checked against
lc_cuda.reference's float64 oracle. --section writes such a run as one section of RESULTS.md.

Per case, dtype and direction the run measures each method's median time, its multiple of the
roofline floor max(fewest bytes / copy bandwidth, flops / matmul rate) with both ceilings
measured in the same run (each the better of a measurement at its start and one at its end),
its throughput and its peak extra memory (on the CPU: resident memory,
benchmarks/host_memory.py; not measured for JAX and Keras). Every method's results are
first checked against lc_cuda's fallback; a mismatch is reported and fails the run
(exit 1). A method that runs out of memory or fails is reported, and the run goes on.

Outputs in --out: results.json, results.csv and chart_<dtype>.png; with --results-md, a
RESULTS.md made from them (benchmarks/report.py remakes it from the JSON).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import host_memory
import numpy as np
import torch
from cases import (
    CASES,
    CASES_BY_NAME,
    CPU_BATCHES,
    DIRECTIONS,
    FAMILY_CPU_BATCHES,
    QUICK_CASES,
    Case,
)
from ceilings import PRECISIONS, best_ceilings, floor_of, measure_ceilings, precision
from keras_tasks import run_keras
from methods import (
    FAMILY_METHODS,
    JAX,
    KERAS,
    METHODS,
    Method,
    environment,
    jax_takes,
    methods_for,
)
from report import print_table, write_all
from runner_process import run_tasks
from timing import peak_extra_bytes, timings_ms

import lc_cuda
from lc_cuda import convert
from lc_cuda.reference import reference_local_conv, reference_local_conv_transpose

HERE = Path(__file__).resolve().parent
L2_BYTES = 60 * 2**20  # the H200's L2; smaller working sets are rotated through several copies
# Largest error relative to the reference's scale that a method may show, per precision.
TOLERANCE = {"float32": 1e-4, "float32_tf32": 5e-3, "bfloat16": 4e-2, "float16": 5e-3}


class Progress:
    """tqdm where it is installed, a line per step otherwise."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr)
        except ImportError:
            self.bar, self.done, self.total = None, 0, total

    def step(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text[:60])
            self.bar.update()
        else:
            self.done += 1
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_sets(case: Case, batch: int, dtype, device, count: int) -> list[dict]:
    """`count` independent input sets: input, local weight and per-location bias, the Conv2d
    weight and bias for cuDNN, and a grad_output."""
    if not case.plain:
        return [family_set(case, batch, dtype, device) for _ in range(count)]
    sets = []
    for _ in range(count):
        k, o, c, out = case.kernel, case.out_channels, case.in_channels, case.out_size
        scale = (c * k * k) ** -0.5
        sets.append({
            "input": torch.randn(batch, c, case.size, case.size, device=device, dtype=dtype),
            "weight": torch.randn(out, out, o, c, k, k, device=device, dtype=dtype) * scale,
            "bias": torch.randn(o, out, out, device=device, dtype=dtype),
            "conv_weight": torch.randn(o, c, k, k, device=device, dtype=dtype) * scale,
            "conv_bias": torch.randn(o, device=device, dtype=dtype),
            "grad_output": torch.randn(batch, o, out, out, device=device, dtype=dtype),
        })  # fmt: skip
    return sets


def family_set(case: Case, batch: int, dtype, device) -> dict:
    """Input, weight and bias of a family case in lc_cuda's layout (methods.FAMILY_METHODS),
    and a grad_output."""
    channels = (case.in_channels, case.out_channels // case.groups)
    if not case.transposed:
        channels = (case.out_channels, case.in_channels // case.groups)
    bias_sizes = case.out_sizes if case.transposed else case.region_sizes
    kernel = (case.kernel,) * case.dims

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    return {
        "input": randn(batch, case.in_channels, *case.sizes),
        "weight": randn(*case.region_sizes, *channels, *kernel) * case.patch_size**-0.5,
        "bias": randn(case.out_channels, *bias_sizes),
        "grad_output": randn(batch, case.out_channels, *case.out_sizes),
    }


def set_bytes(case: Case, batch: int, element_size: int) -> int:
    return case.counts("forward+backward", batch, element_size)[0]


class Runner:
    """One method in one direction over rotating input sets: call(i) runs on set i % len."""

    def __init__(self, method: Method, sets: list[dict], case: Case, direction: str):
        self.method, self.case, self.direction = method, case, direction
        self.prepared = [self._prepare(tensors) for tensors in sets]

    def _arguments(self, tensors: dict, requires_grad: tuple[bool, bool, bool]):
        names = (
            ("input", "weight", "bias")
            if self.method.weights == "local"
            else ("input", "conv_weight", "conv_bias")
        )
        return [tensors[n].detach().requires_grad_(g) for n, g in zip(names, requires_grad)]

    def _prepare(self, tensors: dict):
        needs = {
            "forward": (False,) * 3,
            "forward+backward": (True,) * 3,
            "grad_input": (True, False, False),
            "grad_weight": (False, True, True),
        }
        leaves = self._arguments(tensors, needs[self.direction])
        if self.direction in ("grad_input", "grad_weight"):
            # The forward runs once, outside the timing; each call runs the backward alone.
            out = self._forward(leaves)
            return leaves, out, tensors["grad_output"]
        return leaves, None, tensors["grad_output"]

    def _forward(self, leaves):
        with environment(self.method.environment):
            if not self.case.plain:
                return self.method.function(*leaves, self.case)
            return self.method.function(*leaves, self.case.stride, self.case.padding)

    def __call__(self, i: int):
        with environment(self.method.environment):
            return self._call(i)

    def _call(self, i: int):
        leaves, out, grad_output = self.prepared[i % len(self.prepared)]
        if self.direction == "forward":
            with torch.no_grad():
                return (self._forward(leaves),)
        if self.direction == "forward+backward":
            return torch.autograd.grad(self._forward(leaves), leaves, grad_output)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        return torch.autograd.grad(out, wanted, grad_output, retain_graph=True)


def oracle_results(tensors: dict, case: Case, direction: str):
    """lc_cuda.reference's float64 oracle on a family case's inputs, its gradients by autograd."""
    needs = {
        "forward": (),
        "forward+backward": (0, 1, 2),
        "grad_input": (0,),
        "grad_weight": (1, 2),
    }
    leaves = [
        tensors[name].detach().double().requires_grad_(i in needs[direction])
        for i, name in enumerate(("input", "weight", "bias"))
    ]
    dims = case.dims
    geometry = dict(
        stride=(case.stride,) * dims,
        padding=(case.padding,) * (2 * dims),
        dilation=(case.dilation,) * dims,
        groups=case.groups,
        share=case.shares,
        share_mode=case.share_mode,
    )
    if case.transposed:
        out = reference_local_conv_transpose(
            *leaves, output_padding=(case.output_padding,) * dims, **geometry
        )
    else:
        out = reference_local_conv(*leaves, **geometry)
    if direction == "forward":
        return [out]
    wanted = [leaves[i] for i in needs[direction]]
    return list(torch.autograd.grad(out, wanted, tensors["grad_output"].double()))


def reference_for(method: Method, tensors: dict, case: Case, direction: str):
    """The fallback's results on the same inputs (for cuDNN: its weights tiled per location,
    and gradients summed back over locations); for a family case, the float64 oracle's."""
    if not case.plain:
        return oracle_results(tensors, case, direction)
    if method.weights == "local":
        local = tensors
    else:
        out = case.out_size
        local = dict(tensors)
        local["weight"] = tensors["conv_weight"].expand(out, out, *tensors["conv_weight"].shape)
        local["bias"] = tensors["conv_bias"].view(-1, 1, 1).expand(-1, out, out)
    results = list(Runner(METHODS["lc_cuda_unfold"], [local], case, direction)(0))
    if method.weights == "conv":
        if direction == "forward+backward":
            results = [results[0], results[1].sum((0, 1)), results[2].sum((1, 2))]
        elif direction == "grad_weight":
            results = [results[0].sum((0, 1)), results[1].sum((1, 2))]
    return results


def relative_error(results, reference) -> float:
    worst = 0.0
    for got, want in zip(results, reference):
        got, want = got.detach().double(), want.detach().double()
        worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item())
    return worst


def print_ceilings(when: str, ceilings: dict) -> None:
    print(
        f"ceilings {when}: copy {ceilings['copy_GBps']:.0f} GB/s, matmul TFLOP/s "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceilings["matmul_TFLOPs"].items()),
        flush=True,
    )


def measure_methods(named, sets, case, direction, key, device, repeats, rounds=1) -> dict:
    """{name: record} for the methods in `named` ({name: Method}): each checked against the
    reference first, then `repeats` timed calls of each, spread over `rounds` rounds that take
    the methods in turn (each method's first round after 3 untimed calls, later rounds after
    one), so that a slow spell of a shared machine, which lasts seconds, falls on every method
    alike; then each one's peak extra memory (on the CPU with lc_cuda keeping no freed output,
    so that a reused block still counts). Every method's prepared runner lives until the end:
    the caller passes one method at a time where those hold graphs."""
    records, runners = {}, {}

    def failed(name, failure):
        if isinstance(failure, torch.cuda.OutOfMemoryError):
            records[name]["status"] = "out of memory"
        else:
            records[name]["status"] = f"failed: {type(failure).__name__}: {str(failure)[:120]}"
        runners.pop(name, None)

    try:
        for name, method in named.items():
            records[name] = {}
            try:
                runner = Runner(method, sets, case, direction)
                error = relative_error(runner(0), reference_for(method, sets[0], case, direction))
                records[name]["error"] = error
                if not error <= TOLERANCE[key]:
                    records[name]["status"] = f"MISMATCH {error:.2g}"
                    continue
                runners[name] = runner
            except Exception as failure:  # reported; the run goes on
                failed(name, failure)
        for round_ in range(rounds):
            calls = repeats // rounds + (round_ < repeats % rounds)
            for name, runner in list(runners.items()):
                try:
                    times = timings_ms(runner, calls, device, warmup=3 if round_ == 0 else 1)
                    # every call's time is kept, so that a run's spread can be judged afterwards
                    records[name].setdefault("times_ms", []).extend(times)
                except Exception as failure:
                    failed(name, failure)
        for name, runner in list(runners.items()):
            record = records[name]
            try:
                record["ms"] = statistics.median(record["times_ms"])
                if device.type == "cpu" and host_memory.available():
                    with environment((("LC_CUDA_CPU_KEEP_MB", "0"),)):
                        runner(0)  # lc_cuda frees the blocks it kept before the measured call
                        peak = host_memory.peak_extra_bytes(lambda runner=runner: runner(0))
                else:
                    peak = peak_extra_bytes(runner, device)
                record["peak_extra_MB"] = None if peak is None else peak / 2**20
                record["status"] = "ok"
            except Exception as failure:
                failed(name, failure)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def measure_method(method, sets, case, direction, key, device, repeats) -> dict:
    """measure_methods for one method, in one round."""
    return measure_methods({method.name: method}, sets, case, direction, key, device, repeats)[
        method.name
    ]


def with_counts(records: list[dict], element_size: int, key) -> list[dict]:
    """Checks records measured in another process (JAX, Keras) against the tolerance, as
    measure_method does, and adds the bytes and flops their floors are set from."""
    for record in records:
        if "status" not in record:
            ok = record["error"] <= TOLERANCE[key]
            record["status"] = "ok" if ok else f"MISMATCH {record['error']:.2g}"
            if not ok:
                record.pop("ms", None)
        bytes_, flops = CASES_BY_NAME[record["case"]].counts(
            record["direction"], record["batch"], element_size
        )
        record.update(bytes=bytes_, flops=flops)
    return records


def run_jax(cases, key, batch_of, directions, repeats, device, sets_of) -> list[dict]:
    """JAX in its own process, on the same inputs (saved as float32 .npz files)."""
    records = []
    by_name = {case.name: case for case in cases}
    with tempfile.TemporaryDirectory() as folder:
        tasks = []
        for case in filter(jax_takes, cases):
            tensors = sets_of(case)[0]
            reference = reference_for(METHODS["lc_cuda_unfold"], tensors, case, "forward")[0]
            path = os.path.join(folder, f"{case.name}.npz")
            arrays = {
                name: tensors[name].float().cpu().numpy()
                for name in ("input", "bias", "grad_output")
            }
            arrays["rhs"] = convert.to_jax(tensors["weight"].float())
            arrays["reference"] = reference.float().cpu().numpy()
            np.savez(path, **arrays)
            tasks.append(
                {
                    "case": case.name,
                    "dtype": key,
                    "npz": path,
                    "dims": case.dims,
                    "kernel": case.kernel,
                    "stride": case.stride,
                    "padding": case.padding,
                    "directions": directions,
                    "repeats": repeats,
                }
            )
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        if device.type != "cuda":
            env["JAX_PLATFORMS"] = "cpu"
        if not tasks:
            return records
        results, failure = run_tasks(HERE / "jax_runner.py", tasks, folder, env)
        if failure:
            return [
                {
                    "case": t["case"],
                    "dtype": key,
                    "direction": d,
                    "method": JAX,
                    "batch": batch_of(by_name[t["case"]]),
                    "status": f"failed: {failure}",
                }
                for t in tasks
                for d in directions
            ]
        for record in results:
            peak = record.pop("peak_bytes", None)
            record["peak_extra_MB"] = None if peak is None else peak / 2**20
            record["batch"] = batch_of(by_name[record["case"]])
            records.append(record)
    return records


def description(name: str, cases: list[Case]) -> str:
    """A torch method's description: its plain 2D one, its family one, or both where the run
    has both kinds of case."""
    kinds = [
        (kind, methods[name].description)
        for kind, methods, taken in (
            ("plain 2D cases", METHODS, any(case.plain for case in cases)),
            ("family cases", FAMILY_METHODS, any(not case.plain for case in cases)),
        )
        if taken and name in methods
    ]
    if len(kinds) == 1:
        return kinds[0][1]
    return "; ".join(f"{kind}: {text}" for kind, text in kinds)


# The layer and batch whose extra memory the CPU run checks against the scratch bound.
MEMORY_CASE = ("deepface_L4", 128)


def memory_check(case_name: str, batch: int) -> dict | None:
    """memory_check.py in its own process, at this run's thread count, with glibc made to map
    every large block afresh and lc_cuda keeping none, so that the resident-set high-water mark
    sees every output; None (reported) where it fails."""
    environment_ = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS=str(torch.get_num_threads()),
        LC_CUDA_CPU_KEEP_MB="0",  # every output fresh, so that the peak counts it
    )
    run = subprocess.run(
        [sys.executable, str(HERE / "memory_check.py"), case_name, str(batch)],
        capture_output=True,
        text=True,
        env=environment_,
        cwd=HERE,
    )
    if run.returncode != 0:
        print(f"memory check failed: {run.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout.splitlines()[-1])


def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    jax_here = importlib.util.find_spec("jax") is not None
    keras_here = importlib.util.find_spec("tf_keras") is not None
    default_methods = (
        ["lc_cuda", "lc_cuda_unfold", "naive_snippet", "naive_compiled", "cudnn_conv2d"]
        + ([JAX] if jax_here else [])
        if gpu
        else ["lc_cuda", "lc_cuda_avx2", "lc_cuda_blas", "lc_cuda_unfold", "naive_snippet"]
        + ["naive_compiled"]
        + ([JAX] if jax_here else [])
        + (list(KERAS) if keras_here else [])
    ) + ["torch_conv"]  # family cases only; a method that takes none of the run's cases is dropped
    if not gpu and "--quick" in (argv if argv is not None else sys.argv[1:]):
        default_methods = ["lc_cuda", "lc_cuda_unfold", "naive_snippet"]  # about a minute
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="four small cases, 5 repeats (on the CPU: batch 4, lc_cuda against the fallback and "
        "the snippet)",
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES_BY_NAME))
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(dict.fromkeys([*METHODS, *FAMILY_METHODS, JAX, *KERAS])),
        default=default_methods,
    )
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(PRECISIONS),
        default=list(PRECISIONS) if gpu else ["float32", "bfloat16"],
    )
    parser.add_argument(
        "--repeats", type=int, help="timed calls per median (default 20; 5 with --quick)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds that take a case's torch methods in turn, the repeats spread over them "
        "(default 3; the backward-only directions take one method at a time)",
    )
    parser.add_argument(
        "--cpu-batch",
        type=int,
        help="batch size without a GPU (default: cases.CPU_BATCHES and FAMILY_CPU_BATCHES for "
        "their cases, 4 for others)",
    )
    parser.add_argument("--threads", type=int, help="torch (and Keras) CPU threads")
    parser.add_argument("--out", type=Path, default=HERE / "results" / device.type)
    parser.add_argument("--results-md", type=Path, help="also write a RESULTS.md here")
    parser.add_argument(
        "--section",
        help="write the run as this section of --results-md (replacing a section of that title), "
        "keeping the rest of the file",
    )
    args = parser.parse_args(argv)

    repeats = args.repeats or (5 if args.quick else 20)
    rounds = max(1, min(args.rounds, repeats))
    if args.threads:
        torch.set_num_threads(args.threads)
    default_names = [c.name for c in CASES if not args.quick or c.name in QUICK_CASES]
    if not gpu and not args.quick:
        default_names = list(CPU_BATCHES)
    names = args.cases or default_names
    cases = [CASES_BY_NAME[name] for name in names]
    methods = [m for m in args.methods if m in METHODS or m in FAMILY_METHODS]
    keras_methods = {m: KERAS[m] for m in args.methods if m in KERAS}
    dtypes = [d for d in args.dtypes if gpu or d != "float32_tf32"]

    def batch_of(case):
        if gpu:
            return case.batch
        if args.cpu_batch or args.quick:
            return min(case.batch, args.cpu_batch or 4)
        return {**CPU_BATCHES, **FAMILY_CPU_BATCHES}.get(case.name, min(case.batch, 4))

    device_name = (
        torch.cuda.get_device_name()
        if gpu
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    )
    # which lc_cuda ran: an editable install elsewhere wins over a worktree's without PYTHONPATH
    print(
        f"lc_cuda benchmark on {device_name}; lc_cuda from {lc_cuda.__file__}, "
        f"build {lc_cuda.build_info()}",
        flush=True,
    )
    load_at_start = os.getloadavg()
    # Measured again at the end: the floors are set from the better of each (ceilings.py).
    ceilings = measure_ceilings(device, dtypes)
    print_ceilings("at the start", ceilings)

    records = []
    plain_cases = [case for case in cases if case.plain]
    progress = Progress(
        len(dtypes)
        * (
            sum(len(args.directions) * len(set(methods) & set(methods_for(c))) for c in cases)
            + (JAX in args.methods) * len(cases)
            + bool(keras_methods) * len(plain_cases)
        )
    )
    for key in dtypes:
        with precision(key) as dtype:
            element_size = torch.empty((), dtype=dtype).element_size()
            cached_sets = {}

            def sets_of(case, dtype=dtype, element_size=element_size, cached_sets=cached_sets):
                if case.name not in cached_sets:
                    working_set = set_bytes(case, batch_of(case), element_size)
                    count = (
                        1
                        if working_set >= L2_BYTES or not gpu
                        else min(16, math.ceil(2 * L2_BYTES / working_set))
                    )
                    cached_sets.clear()
                    cached_sets[case.name] = make_sets(case, batch_of(case), dtype, device, count)
                return cached_sets[case.name]

            for case in cases:
                for direction in args.directions:
                    bytes_, flops = case.counts(direction, batch_of(case), element_size)
                    available = methods_for(case)
                    named = {m: available[m] for m in methods if m in available}
                    # The backward-only directions' runners hold forward graphs: one at a time.
                    groups = (
                        [named]
                        if direction in ("forward", "forward+backward")
                        else [{m: method} for m, method in named.items()]
                    )
                    measured = {}
                    for group in groups:
                        progress.step(f"{key} {case.name} {direction}: {', '.join(group)}")
                        measured.update(
                            measure_methods(
                                group,
                                sets_of(case),
                                case,
                                direction,
                                key,
                                device,
                                repeats,
                                rounds if len(groups) == 1 else 1,
                            )
                        )
                        for _ in range(len(group) - 1):
                            progress.step(f"{key} {case.name} {direction}")
                    for name, record in measured.items():
                        records.append(
                            {
                                "case": case.name,
                                "dtype": key,
                                "direction": direction,
                                "method": name,
                                "batch": batch_of(case),
                                "bytes": bytes_,
                                "flops": flops,
                                **record,
                            }
                        )
            cached_sets.clear()
            if JAX in args.methods:
                jax_records = run_jax(
                    cases, key, batch_of, list(args.directions), repeats, device, sets_of
                )
                for case in cases:
                    progress.step(f"{key} {case.name} jax")
                records += with_counts(jax_records, element_size, key)
                cached_sets.clear()
            if keras_methods and plain_cases:
                keras_records = run_keras(
                    keras_methods,
                    plain_cases,
                    key,
                    batch_of,
                    list(args.directions),
                    repeats,
                    sets_of,
                    torch.get_num_threads(),
                )
                for case in plain_cases:
                    progress.step(f"{key} {case.name} keras")
                records += with_counts(keras_records, element_size, key)
                cached_sets.clear()
    progress.close()
    memory = None
    ceiling_measurements = [ceilings]
    try:
        ceiling_measurements.append(measure_ceilings(device, dtypes))
        print_ceilings("at the end", ceiling_measurements[1])
    except Exception as error:  # a failure here must not lose the run's results
        print(f"ceilings at the end not measured ({error}); the start's kept", flush=True)
    ceilings = best_ceilings(ceiling_measurements)
    print_ceilings("kept (the floors')", ceilings)
    for record in records:  # every record's floor, set once
        record["floor_ms"] = floor_of(record["bytes"], record["flops"], ceilings, record["dtype"])

    if not gpu and not args.quick and "lc_cuda" in methods and MEMORY_CASE[0] in names:
        print(f"extra memory of {MEMORY_CASE[0]} at N={MEMORY_CASE[1]}...", flush=True)
        memory = memory_check(*MEMORY_CASE)

    result = {
        "device_name": device_name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "build_info": lc_cuda.build_info(),
        "lc_cuda_path": lc_cuda.__file__,
        # quoted as a shell needs it (a --section title has spaces)
        "command": shlex.join(["python", "benchmarks/bench.py", *(argv or sys.argv[1:])]),
        "ceilings": ceilings,
        "ceiling_measurements": ceiling_measurements,
        "rounds": rounds,
        # the 1, 5 and 15-minute load averages: another process's work shows up as noise
        "load": {"start": load_at_start, "end": os.getloadavg(), "cpus": os.cpu_count()},
        "dtypes": dtypes,
        "directions": list(args.directions),
        # the methods that took at least one of the run's cases
        "methods": [
            m
            for m in [*methods, *([JAX] if JAX in args.methods else []), *keras_methods]
            if any(r["method"] == m for r in records)
        ],
        "method_descriptions": {
            **{name: description(name, cases) for name in methods},
            JAX: "jax.lax.conv_general_dilated_local under jax.jit, in its own process "
            "(wall-clock timing around block_until_ready)",
            **{
                name: f"tf-keras LocallyConnected2D implementation {number} under tf.function, "
                "in its own process (ZeroPadding2D first where the case pads)"
                for name, number in keras_methods.items()
            },
        },
        "cases": [case.__dict__ for case in cases],
        "records": records,
        **({"memory_check": memory} if memory else {}),
    }
    write_all(result, args.out, args.results_md, args.section)
    print_table(result)
    print(
        f"\nwritten: {args.out}/results.json, results.csv, chart_*.png"
        + (f", {args.results_md}" if args.results_md else "")
    )
    mismatches = [r for r in records if r.get("status", "").startswith("MISMATCH")]
    for r in mismatches:
        print(f"MISMATCH: {r['method']} {r['case']} {r['dtype']} {r['direction']}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
