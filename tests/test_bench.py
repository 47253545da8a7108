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
        rate = ceilings["matmul_TFLOPs"][r["dtype"]]
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
