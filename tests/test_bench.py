"""benchmarks/bench.py --quick on the CPU: the files it writes exist, and their numbers are
finite and consistent with each other and with counts worked out here by hand."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_torch

pytestmark = pytest.mark.slow  # processes of their own, exports, compiles: minutes in all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--quick",
            "--repeats",
            "2",
            "--cases",
            "convnet_local3",
            "cunn232_c1",
            "--out",
            str(out),
            "--results-md",
            str(out / "RESULTS.md"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout, json.loads((out / "results.json").read_text())


def test_outputs_exist(bench_run):
    out, stdout, result = bench_run
    assert "geometric means over the cases" in stdout
    assert result["device_name"] in (out / "RESULTS.md").read_text()
    with open(out / "results.csv") as file:
        assert len(list(csv.DictReader(file))) == len(result["records"])


def test_charts_exist(bench_run):
    pytest.importorskip("matplotlib")  # the `examples` extra; without it no charts are drawn
    out, _, result = bench_run
    for dtype in result["dtypes"]:
        assert (out / f"chart_{dtype}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "chart_float32.png" in (out / "RESULTS.md").read_text()


def test_ceilings_are_the_better_of_two_measurements(bench_run):
    """The floors use each ceiling's better measurement, at the run's start or its end."""
    out, _, result = bench_run
    measured = result["ceiling_measurements"]
    assert len(measured) == 2
    assert result["ceilings"]["copy_GBps"] == max(m["copy_GBps"] for m in measured)
    assert result["ceilings"]["matmul_TFLOPs"].keys() == measured[0]["matmul_TFLOPs"].keys()
    for key, rate in result["ceilings"]["matmul_TFLOPs"].items():
        assert rate == max(m["matmul_TFLOPs"][key] for m in measured)
    assert "the better of each at its start and its end" in (out / "RESULTS.md").read_text()


def test_best_ceilings_and_their_wording():
    """best_ceilings keeps each ceiling's better measurement; RESULTS.md says how the ceilings
    were taken: the better of two, the start's alone where the end's failed, or (runs before
    that) nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report
    from ceilings import best_ceilings

    start = {"copy_GBps": 32.0, "matmul_TFLOPs": {"float32": 0.2, "bfloat16": 0.3}}
    end = {"copy_GBps": 43.0, "matmul_TFLOPs": {"float32": 0.1, "bfloat16": 0.4}}
    assert best_ceilings([start, end]) == {
        "copy_GBps": 43.0,
        "matmul_TFLOPs": {"float32": 0.2, "bfloat16": 0.4},
    }
    assert best_ceilings([start]) == start
    assert report.ceilings_when({}) == ""
    assert "at its start only" in report.ceilings_when({"ceiling_measurements": [start]})
    both = report.ceilings_when({"ceiling_measurements": [start, end]})
    assert "the better of each at its start and its end" in both and "32 and 43 GB/s" in both


@pytest.mark.parametrize("bfloat16_ms", [400.0, 30.0, 2.0])
def test_a_16_bit_rate_below_float32s_is_timed_once(monkeypatch, bfloat16_ms):
    """measure_ceilings times a 16-bit product once, after a warm-up, where that reads below
    half of float32's best (the floor takes float32's rate then), and five times more where it
    does not; float32 first, whatever the order asked. The times are made up, by the precision
    timed: 20 ms for float32; for bfloat16 400 ms (below half its rate), 30 ms (slower, but not
    that much) or 2 ms (faster)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import contextlib

    import ceilings
    import torch

    timed = {"float32": 0, "bfloat16": 0}
    keys = []
    real_precision = ceilings.precision

    @contextlib.contextmanager
    def noted_precision(key):
        with real_precision(key) as dtype:
            keys.append(key)
            yield dtype

    def made_up_timings(run, repeats, device, warmup=3):
        timed[keys[-1]] += repeats
        return [{"float32": 20.0, "bfloat16": bfloat16_ms}[keys[-1]]] * repeats

    monkeypatch.setattr(ceilings, "precision", noted_precision)
    monkeypatch.setattr(ceilings, "_copy_GBps", lambda device, elements: 30.0)
    monkeypatch.setattr(ceilings, "timings_ms", made_up_timings)
    result = ceilings.measure_ceilings(torch.device("cpu"), ["bfloat16", "float32"])
    assert keys == ["float32", "bfloat16"]
    assert timed["float32"] == 1 + 5
    assert timed["bfloat16"] == (1 if bfloat16_ms > 2 * 20.0 else 1 + 5)
    rate = 2 * 1024**3 / bfloat16_ms / 1e9
    assert result["matmul_TFLOPs"]["bfloat16"] == pytest.approx(rate)


def test_floor_takes_float32s_rate_where_16_bit_is_slower():
    """A CPU without bfloat16 arithmetic multiplies bfloat16 slower than float32 in torch; the
    floor of a 16-bit case takes float32's rate there (kernels that widen to float reach it),
    and its own where that is faster."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ceilings import floor_of

    slow_16 = {"copy_GBps": 40.0, "matmul_TFLOPs": {"float32": 0.1, "bfloat16": 0.02}}
    fast_16 = {"copy_GBps": 40.0, "matmul_TFLOPs": {"float32": 0.2, "bfloat16": 0.4}}
    flops, tiny = 10**9, 4  # compute-bound: 1 GFLOP against 4 bytes
    assert math.isclose(floor_of(tiny, flops, slow_16, "bfloat16"), 10.0)  # 1e9 / 0.1e12 s
    assert math.isclose(floor_of(tiny, flops, fast_16, "bfloat16"), 2.5)
    assert math.isclose(floor_of(tiny, flops, fast_16, "float32"), 5.0)
    # Bandwidth-bound: 4 GB at 40 GB/s, whatever the rates.
    assert math.isclose(floor_of(4 * 10**9, 1, slow_16, "bfloat16"), 100.0)
    # A run of 16-bit dtypes alone measured no float32 rate: the precision's own.
    alone = {"copy_GBps": 40.0, "matmul_TFLOPs": {"bfloat16": 0.4}}
    assert math.isclose(floor_of(tiny, flops, alone, "bfloat16"), 2.5)


def test_numbers_are_finite_and_consistent(bench_run):
    _, _, result = bench_run
    records = result["records"]
    assert {r["direction"] for r in records} == {
        "forward",
        "forward+backward",
        "grad_input",
        "grad_weight",
    }
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"]
    naive = {
        (r["case"], r["dtype"], r["direction"]): r["ms"]
        for r in records
        if r["method"] == "naive_snippet"
    }
    for r in records:
        for key in ("ms", "floor_ms", "times_floor", "GBps", "TFLOPs", "error"):
            assert math.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["ms"] > 0 and r["floor_ms"] > 0
        assert math.isclose(r["times_floor"], r["ms"] / r["floor_ms"], rel_tol=1e-9)
        assert math.isclose(r["percent_of_floor"] * r["times_floor"], 100, rel_tol=1e-9)
        assert math.isclose(r["GBps"], r["bytes"] / r["ms"] / 1e6, rel_tol=1e-9)
        naive_ms = naive[(r["case"], r["dtype"], r["direction"])]
        assert math.isclose(r["speedup_vs_naive"], naive_ms / r["ms"], rel_tol=1e-9)
        ceilings = result["ceilings"]
        # A 16-bit precision's rate is at least float32's (ceilings.floor_of).
        rate = max(ceilings["matmul_TFLOPs"][r["dtype"]], ceilings["matmul_TFLOPs"]["float32"])
        floor = max(r["bytes"] / ceilings["copy_GBps"] / 1e6, r["flops"] / rate / 1e9)
        assert math.isclose(r["floor_ms"], floor, rel_tol=1e-9)
    for row in result["summary"]:
        mine = [
            r
            for r in records
            if (r["dtype"], r["direction"], r["method"])
            == (row["dtype"], row["direction"], row["method"])
        ]
        kept = [r for r in mine if not r["flags"]]
        assert row["flagged"] == len(mine) - len(kept)
        if kept:
            expected = math.exp(sum(math.log(r["times_floor"]) for r in kept) / len(kept))
            assert math.isclose(row["times_floor"], expected, rel_tol=1e-9)
    assert all(len(r["times_ms"]) == 2 for r in records)  # --repeats 2
    assert all(r["min_ms"] <= r["ms"] <= r["max_ms"] for r in records)
    assert len(result["load"]["start"]) == 3 and result["load"]["cpus"] >= 1


def test_flags_keep_untrustworthy_cells_out_of_the_results():
    """A cell faster than the floor, or whose calls spread wider than NOISY_SPREAD, is flagged,
    shown as such, and left out of the geometric means; a run with many is marked untrusted."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    def record(case, ms, times):
        return {
            "case": case, "dtype": "float32", "direction": "forward", "method": "lc_cuda",
            "ms": ms, "times_ms": times, "floor_ms": 1.0, "bytes": 1, "flops": 1,
        }  # fmt: skip

    records = [
        record("steady", 2.0, [1.9, 2.0, 2.0, 2.0, 2.1, 9.0]),  # one outlier: still trusted
        record("fast", 0.5, [0.5, 0.5, 0.5]),  # below the floor
        record("noisy", 4.0, [2.0, 2.0, 4.0, 8.0, 8.0]),
    ]
    result = {
        "records": records, "dtypes": ["float32"], "directions": ["forward"],
        "methods": ["lc_cuda"],
    }  # fmt: skip
    report.derive(records)
    assert [r["flags"] for r in records] == [[], ["below floor"], ["noisy"]]
    assert report.cell(records[1]).startswith("BELOW FLOOR") and "x)" not in report.cell(records[2])
    (row,) = report.summary(result)
    assert (row["cases"], row["flagged"]) == (1, 2) and math.isclose(row["times_floor"], 2.0)
    assert report.run_verdict(result).startswith("TOO NOISY TO TRUST: 2 of 3")


def test_lead_columns_leave_out_lc_cuda_paths_and_flagged_cells():
    """lc_cuda's lead is over the peers, not over lc_cuda forced onto its own lesser paths;
    lc_cuda_avx2's is over those and the BLAS path too; a flagged cell is no result to lead."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    def record(method, ms, flags=()):
        return {"method": method, "ms": ms, "flags": list(flags)}

    row = {
        "lc_cuda": record("lc_cuda", 1.0),
        "lc_cuda_avx2": record("lc_cuda_avx2", 2.0),
        "lc_cuda_blas": record("lc_cuda_blas", 3.0),
        "naive_snippet": record("naive_snippet", 6.0),
        "naive_compiled": record("naive_compiled", 0.5, ["noisy"]),
    }
    assert report.lead_cell(row) == "6.00x (naive_snippet)"
    assert report.lead_cell(row, "lc_cuda_avx2") == "1.50x (lc_cuda_blas)"
    row["naive_compiled"]["flags"] = []
    assert report.lead_cell(row) == "0.50x (naive_compiled)"


def test_counts_worked_by_hand(bench_run):
    _, _, result = bench_run
    # convnet_local3 at the CPU batch of 4, float32: input 4*64*6*6, weight 6*6*64*64*3*3,
    # bias 64*6*6, output 4*64*6*6 elements; 2*4*36*64*576 flops per GEMM pass.
    input, weight, bias, output = 9216, 1327104, 2304, 9216
    gemm = 2 * 4 * 36 * 64 * 576
    expected = {
        "forward": ((input + weight + bias + output) * 4, gemm),
        "grad_input": ((output + weight + input) * 4, gemm),
        "grad_weight": ((output + input + weight + bias) * 4, gemm),
        "forward+backward": ((3 * (input + weight) + 2 * (bias + output)) * 4, 3 * gemm),
    }
    for r in result["records"]:
        if r["case"] == "convnet_local3" and r["dtype"] == "float32":
            assert r["batch"] == 4
            assert (r["bytes"], r["flops"]) == expected[r["direction"]], r["direction"]


@needs_torch(2, 6, "ONNX export with dynamo=True (benchmarks/onnx_bench.py)")
def test_onnx_bench_small():
    """benchmarks/onnx_bench.py on a reduced DeepFace: it checks onnxruntime against lc_cuda
    (and fails on a mismatch) before it times them."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    script = ROOT / "benchmarks" / "onnx_bench.py"
    arguments = ["--input-size", "72", "--num-classes", "10", "--batch", "2", "--repeats", "1"]
    run = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if " ratio " in line]
    assert [line.split()[0] for line in lines] == ["L4", "L5", "L6", "DeepFace"]


def test_paired_shared_reports_each_ratio():
    """benchmarks/paired_shared.py, one round: every layer's median and the three ratios, finite
    and positive."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paired_shared.py"), "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ratios = [line for line in run.stdout.splitlines() if "(median of the rounds' ratios)" in line]
    assert len(ratios) == 6  # three per direction
    for line in ratios:
        value = float(line.split(": ")[1].split()[0])
        assert math.isfinite(value) and value > 0, line


def family_modules():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench
    import cases
    import methods

    return bench, cases, methods


def tiny(case):
    """The case at a size whose every method (and the oracle) runs in a moment."""
    import dataclasses

    size = {1: (40,), 2: case.size, 3: (6, 7, 5)}[case.dims]
    return dataclasses.replace(case, name=f"tiny_{case.name}", size=size)


@pytest.mark.parametrize("name", [case.name for case in family_modules()[1].FAMILY_CASES])
def test_family_methods_match_the_oracle(name):
    """Every method that takes a family case (lc_cuda, its fallback, the snippet eager and
    compiled, F.conv where the case has one region) gives the float64 oracle's output and
    gradients on a tiny version of it, as bench.measure_method checks before timing."""
    import torch

    bench, cases, methods = family_modules()
    case = tiny(cases.CASES_BY_NAME[name])
    sets = bench.make_sets(case, 2, torch.float32, torch.device("cpu"), 1)
    taken = methods.methods_for(case)
    assert {"lc_cuda", "lc_cuda_unfold", "naive_snippet", "naive_compiled"} <= set(taken)
    assert ("torch_conv" in taken) == (name == "deepid2_conv3_whole")
    for method in taken.values():
        for direction in cases.DIRECTIONS:
            record = bench.measure_method(
                method, sets, case, direction, "float32", torch.device("cpu"), 1
            )
            assert record["status"] == "ok", (method.name, direction, record)
            assert record["error"] <= 1e-5, (method.name, direction, record)


def test_rounds_spread_the_repeats_over_every_method():
    """measure_methods takes the methods in turn in each round, the repeats spread over the
    rounds (7 calls in 3 rounds: 3, 2 and 2), each method's median over all of its calls."""
    import statistics

    import torch

    bench, cases, methods = family_modules()
    case = tiny(cases.CASES_BY_NAME["genomics_1d_50k"])
    sets = bench.make_sets(case, 2, torch.float32, torch.device("cpu"), 1)
    taken = methods.methods_for(case)
    named = {name: taken[name] for name in ("lc_cuda", "naive_snippet")}
    records = bench.measure_methods(
        named, sets, case, "forward", "float32", torch.device("cpu"), 7, rounds=3
    )
    assert set(records) == set(named)
    for name, record in records.items():
        assert record["status"] == "ok", (name, record)
        assert len(record["times_ms"]) == 7, (name, record["times_ms"])
        assert record["ms"] == statistics.median(record["times_ms"])


def test_jax_takes_the_nd_cases():
    """JAX (lax.conv_general_dilated_local in its own process) on tiny 1D and 3D cases, checked
    against the oracle's output; it takes no grouped, shared or transposed case."""
    pytest.importorskip("jax")
    import torch

    bench, cases, methods = family_modules()
    chosen = [tiny(cases.CASES_BY_NAME[n]) for n in ("genomics_1d_50k", "medvol_32cube_c2")]
    sets = {case.name: bench.make_sets(case, 2, torch.float32, torch.device("cpu"), 1)
            for case in chosen}  # fmt: skip
    records = bench.run_jax(
        chosen, "float32", lambda case: 2, ["forward", "forward+backward"], 1,
        torch.device("cpu"), lambda case: sets[case.name],
    )  # fmt: skip
    assert len(records) == 4 and all("status" not in r for r in records), records
    assert all(r["error"] <= 1e-5 and r["ms"] > 0 for r in records), records
    assert [c.name for c in cases.FAMILY_CASES if methods.jax_takes(c)] == [
        "deepid2_conv3_unshared", "medvol_32cube_c2", "fmri_decoder_3d", "genomics_1d_50k",
    ]  # fmt: skip


def test_family_counts_worked_by_hand():
    """Bytes (every tensor once; shared weights once per region) and flops (2*N*K*C_out per
    location, K = C_in / groups * prod(kernel)) of one case of each kind, float32."""
    _, cases, _ = family_modules()

    def expected(input, weight, bias, output, gemm):
        return {
            "forward": ((input + weight + bias + output) * 4, gemm),
            "grad_input": ((output + weight + input) * 4, gemm),
            "grad_weight": ((output + input + weight + bias) * 4, gemm),
            "forward+backward": ((3 * (input + weight) + 2 * (bias + output)) * 4, 3 * gemm),
        }

    worked = {
        # transposed 32 -> 16 channels, 4x4 -> 8x8: a 3x3 bank of 32 x 16 per input position,
        # a bias per output position
        ("ae_decoder_t1", 32): expected(
            32 * 32 * 16, 16 * 32 * 16 * 9, 16 * 64, 32 * 16 * 64, 2 * 32 * 16 * 32 * 16 * 9
        ),
        # 12x10 -> 10x8, 40 -> 60 channels, 2x2 regions of 5x4: 4 banks and 4 biases
        ("deepid2_conv3", 128): expected(
            128 * 40 * 120, 4 * 60 * 40 * 9, 60 * 4, 128 * 60 * 80, 2 * 128 * 80 * 60 * 40 * 9
        ),
        ("deepid2_conv3_whole", 128): expected(
            128 * 40 * 120, 60 * 40 * 9, 60, 128 * 60 * 80, 2 * 128 * 80 * 60 * 40 * 9
        ),
        # 4 groups: each of 128 outputs reads 16 of the 64 inputs
        ("pogodin_cifar_g4", 32): expected(
            32 * 64 * 256, 256 * 128 * 16 * 9, 128 * 256, 32 * 128 * 256, 2 * 32 * 256 * 128 * 144
        ),
        ("depthwise_32x32_c32", 128): expected(
            128 * 32 * 1024, 1024 * 32 * 9, 32 * 1024, 128 * 32 * 1024, 2 * 128 * 1024 * 32 * 9
        ),
        ("medvol_32cube_c2", 4): expected(
            4 * 2 * 32**3, 32**3 * 8 * 2 * 27, 8 * 32**3, 4 * 8 * 32**3, 2 * 4 * 32**3 * 8 * 54
        ),
        ("genomics_1d_50k", 32): expected(
            32 * 50000, 49996 * 5, 49996, 32 * 49996, 2 * 32 * 49996 * 5
        ),
    }
    for (name, batch), counts in worked.items():
        case = cases.CASES_BY_NAME[name]
        for direction, want in counts.items():
            assert case.counts(direction, batch, 4) == want, (name, direction)
    shapes = {c.name: (c.out_sizes, c.region_sizes) for c in cases.FAMILY_CASES}
    assert shapes["ae_decoder_t1"] == ((8, 8), (4, 4))
    assert shapes["deepid2_conv3"] == ((10, 8), (2, 2))
    assert shapes["fmri_decoder_3d"] == ((15, 32, 32), (15, 32, 32))


def test_plain_cases_keep_their_geometry():
    """The 2D cases are plain (the 2D peers take them) and count as before the family."""
    _, cases, methods = family_modules()
    assert all(case.plain and methods.methods_for(case) is methods.METHODS for case in cases.CASES)
    assert not any(case.plain for case in cases.FAMILY_CASES)
    assert cases.CASES_BY_NAME["deepface_L5"].out_sizes == (25, 25)


def test_a_run_becomes_a_section_of_results_md():
    """--section puts a run under its own heading (its headings one level down), replaces a
    section of that title on a rerun, and keeps the rest of the file."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    document = "# results\n\nintro\n\n## Old run\n\nold\n\n## Memory\n\nm\n"
    run = "# lc_cuda benchmark results\n\n- device: cpu\n\n## Geometric means\n\nx\n"
    added = report.with_section(document, run, "Family")
    assert added.startswith(document.rstrip()) and added.endswith(
        "## Family\n\n- device: cpu\n\n### Geometric means\n\nx\n"
    )
    again = report.with_section(added, run.replace("x\n", "y\n"), "Family")
    assert again == added.replace("\nx\n", "\ny\n")
    replaced = report.with_section(document, run, "Old run")
    assert "old" not in replaced and replaced.endswith("## Memory\n\nm\n")


def test_a_main_run_keeps_the_sections_of_other_runs(tmp_path, monkeypatch):
    """A run without --section rewrites RESULTS.md's main page but keeps the sections --section
    runs wrote there (each opens with its own 'Generated by' line), and drops the old main
    page's own sections."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    family = "## Family\n\nGenerated by `benchmarks/report.py` from f.json.\n\n### Means\n\nf\n"
    old_page = "# lc_cuda benchmark results\n\nold\n\n## Memory\n\nm\n\n" + family
    kept = report.run_sections(old_page)
    assert kept == family
    path = tmp_path / "RESULTS.md"
    path.write_text(old_page)
    new_page = "# lc_cuda benchmark results\n\nnew\n"
    monkeypatch.setattr(report, "results_markdown", lambda result, charts, path: new_page)
    report.write_markdown({}, [], path, None)
    assert path.read_text() == "# lc_cuda benchmark results\n\nnew\n\n" + family
