"""The benchmark's outputs, all made from one result dict (the JSON file): the terminal table,
CSV, a PNG chart per dtype and RESULTS.md.

    python benchmarks/report.py results.json --results-md benchmarks/RESULTS.md

regenerates the charts and RESULTS.md from a results file, each floor recomputed from the
record's bytes and flops and the run's ceilings (ceilings.floor_of), and writes results.json and
results.csv again beside it; with --section TITLE the run becomes (or replaces) the section TITLE
of RESULTS.md, and the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
from pathlib import Path

from ceilings import floor_of

CSV_FIELDS = [
    "case", "dtype", "direction", "method", "batch", "status", "ms", "floor_ms", "times_floor",
    "percent_of_floor", "speedup_vs_naive", "GBps", "TFLOPs", "peak_extra_MB", "error",
    "min_ms", "max_ms", "spread", "flags",
]  # fmt: skip


def geometric_mean(values) -> float:
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


# A cell whose timed calls spread wider than this (interquartile range over the median) is
# flagged noisy: on a shared machine another process took the cores during it. The quartiles
# leave out one outlier at each end of 5 calls, so a single preemption does not flag a cell.
NOISY_SPREAD = 0.25
# A run in which more than this share of the cells is flagged is too noisy to trust as a whole.
NOISY_RUN_SHARE = 0.25


def spread(times: list[float]) -> float:
    """Interquartile range of the calls' times over their median."""
    if len(times) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else math.inf


def flags(record: dict) -> list[str]:
    """Why a timed record is not a result: 'below floor' (faster than the roofline floor, which
    no method can be: the timer or the ceilings were wrong) and 'noisy' (spread too wide)."""
    found = []
    if record["ms"] < record["floor_ms"]:
        found.append("below floor")
    if record.get("spread", 0.0) > NOISY_SPREAD:
        found.append("noisy")
    return found


def trusted(record: dict) -> bool:
    return bool(record.get("ms")) and not record.get("flags")


def derive(records: list[dict]) -> None:
    """Adds to each timed record what follows from its time: multiples and percent of the
    floor, throughput, the speed-up over the naive snippet of the same case, the calls' min,
    max and spread, and its flags (a flagged record is reported, not counted as a result)."""
    naive = {
        (r["case"], r["dtype"], r["direction"]): r["ms"]
        for r in records
        if r["method"] == "naive_snippet" and r.get("ms")
    }
    for r in records:
        if not r.get("ms"):
            continue
        if r.get("times_ms"):
            r["min_ms"], r["max_ms"] = min(r["times_ms"]), max(r["times_ms"])
            r["spread"] = spread(r["times_ms"])
        r["flags"] = flags(r)
        r["times_floor"] = r["ms"] / r["floor_ms"]
        r["percent_of_floor"] = 100 * r["floor_ms"] / r["ms"]
        r["GBps"] = r["bytes"] / r["ms"] / 1e6
        r["TFLOPs"] = r["flops"] / r["ms"] / 1e9
        key = (r["case"], r["dtype"], r["direction"])
        if key in naive:
            r["speedup_vs_naive"] = naive[key] / r["ms"]


def summary(result: dict) -> list[dict]:
    """Per dtype, direction and method: geometric means over the cases of the time as a
    multiple of the floor, and of the speed-up over the naive snippet and over the fallback.
    Flagged records (below the floor, noisy) are left out, and counted in 'flagged'."""
    records = result["records"]
    rows = []
    for dtype in result["dtypes"]:
        for direction in result["directions"]:
            timed = [
                r
                for r in records
                if r["dtype"] == dtype and r["direction"] == direction and trusted(r)
            ]
            flagged = [
                r
                for r in records
                if r["dtype"] == dtype and r["direction"] == direction and r.get("flags")
            ]
            fallback = {r["case"]: r["ms"] for r in timed if r["method"] == "lc_cuda_unfold"}
            for method in result["methods"]:
                mine = [r for r in timed if r["method"] == method]
                if not mine:
                    continue
                rows.append({
                    "dtype": dtype, "direction": direction, "method": method,
                    "cases": len(mine),
                    "flagged": sum(r["method"] == method for r in flagged),
                    "times_floor": geometric_mean(r["times_floor"] for r in mine),
                    "speedup_vs_naive": geometric_mean(r.get("speedup_vs_naive") for r in mine),
                    "speedup_vs_fallback": geometric_mean(
                        fallback[r["case"]] / r["ms"] for r in mine if r["case"] in fallback
                    ),
                })  # fmt: skip
    return rows


def cell(record: dict | None) -> str:
    if record is None:
        return "-"
    if not record.get("ms"):
        return record.get("status", "?")[:14]
    if record.get("flags"):
        # shown, but marked as no result: the time and why it is not trusted
        return f"{'/'.join(record['flags']).upper()}: {record['ms']:.3f}?"
    return f"{record['ms']:.3f} ({record['times_floor']:.1f}x)"


def run_verdict(result: dict) -> str:
    """'' for a run to trust; otherwise why not: too large a share of its cells flagged."""
    timed = [r for r in result["records"] if r.get("ms")]
    flagged = [r for r in timed if r.get("flags")]
    if timed and len(flagged) > NOISY_RUN_SHARE * len(timed):
        return (
            f"TOO NOISY TO TRUST: {len(flagged)} of {len(timed)} timed cells are flagged "
            f"(spread above {NOISY_SPREAD:.0%} or below the floor); rerun on a quiet machine"
        )
    return ""


def load_text(result: dict) -> str:
    load = result.get("load")
    if not load:
        return "not recorded"
    return (
        f"1-minute load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at "
        f"the end, on {load['cpus']} logical CPUs"
    )


def memory_cell(record: dict | None) -> str:
    if record is None or not record.get("ms") or record.get("peak_extra_MB") is None:
        return ""
    return f", {record['peak_extra_MB']:.0f} MiB"


# lc_cuda forced onto a lesser path of its own (the AVX2 or BLAS products, the FFMA kernels):
# not peers of lc_cuda itself.
LC_CUDA_VARIANTS = ("lc_cuda_avx2", "lc_cuda_blas", "lc_cuda_ffma")
# The methods whose lead over the others RESULTS.md reports, and the methods left out of each
# one's comparison: lc_cuda against the peers and its fallback; its AVX2 path (the path of CPUs
# without AVX-512) against those and the BLAS path too.
LEADERS = {
    "lc_cuda": ("lc_cuda", *LC_CUDA_VARIANTS),
    "lc_cuda_avx2": ("lc_cuda", "lc_cuda_avx2", "lc_cuda_ffma"),
}


def lead_cell(row: dict[str, dict | None], leader: str = "lc_cuda") -> str:
    """The fastest compared method's time over the leader's, and which method that is."""
    times = {m: r["ms"] for m, r in row.items() if r is not None and trusted(r)}
    others = {m: ms for m, ms in times.items() if m not in LEADERS[leader]}
    if leader not in times or not others:
        return "-"
    fastest = min(others, key=others.get)
    return f"{others[fastest] / times[leader]:.2f}x ({fastest})"


def print_table(result: dict) -> None:
    methods = result["methods"]
    index = {(r["case"], r["dtype"], r["direction"], r["method"]): r for r in result["records"]}
    floors = {(r["case"], r["dtype"], r["direction"]): r["floor_ms"] for r in result["records"]}
    print("\nms per call (multiple of the roofline floor)")
    print(
        f"{'case':<20} {'dtype':<13} {'direction':<17} {'floor ms':>9} "
        + "".join(f"{m:>22}" for m in methods)
    )
    for (case, dtype, direction), floor in floors.items():
        cells = [cell(index.get((case, dtype, direction, m))) for m in methods]
        print(
            f"{case:<20} {dtype:<13} {direction:<17} {floor:>9.4f} "
            + "".join(f"{c:>22}" for c in cells)
        )
    print("\ngeometric means over the cases (flagged cells left out)")
    for row in summary(result):
        print(
            f"  {row['dtype']:<13} {row['direction']:<17} {row['method']:<15} "
            f"{ratio(row['times_floor'])} floor  {ratio(row['speedup_vs_naive'])} vs naive  "
            f"{ratio(row['speedup_vs_fallback'])} vs fallback"
            + (f"  ({row['flagged']} flagged)" if row.get("flagged") else "")
        )
    print(f"\nmachine load: {load_text(result)}")
    verdict = run_verdict(result)
    if verdict:
        print(f"\n{verdict}")


def ratio(value: float) -> str:
    """'12.34x', or '-' where the ratio has no data (its baseline was not run)."""
    return f"{value:8.2f}x" if math.isfinite(value) else f"{'-':>9}"


def write_csv(result: dict, path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for record in result["records"]:
            writer.writerow({**record, "flags": " ".join(record.get("flags", []))})


def write_charts(result: dict, directory: Path) -> list[Path]:
    """One PNG per dtype: speed-up over the naive snippet (top) and percent of the roofline
    floor (bottom), per case and method, one column per direction. [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogFormatter
    except ImportError:
        return []

    class PlainLogFormatter(LogFormatter):
        """Labels the ticks LogFormatter would label, as plain numbers (0.6, 2, 10) rather
        than 6e-01 or 2x10^0."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    paths = []
    cases = list(dict.fromkeys(r["case"] for r in result["records"]))
    methods = result["methods"]
    for dtype in result["dtypes"]:
        directions = result["directions"]
        figure, axes = plt.subplots(
            2, len(directions), figsize=(5 * len(directions), 8), squeeze=False
        )
        for column, direction in enumerate(directions):
            index = {
                (r["case"], r["method"]): r
                for r in result["records"]
                if r["dtype"] == dtype and r["direction"] == direction and r.get("ms")
            }
            width = 0.8 / max(len(methods), 1)
            for row, (metric, label, unit) in enumerate(
                (
                    ("speedup_vs_naive", "speed-up over naive", "speed-up over naive_snippet (x)"),
                    ("percent_of_floor", "% of roofline floor", "roofline floor / time (%)"),
                )
            ):
                ax = axes[row][column]
                for m, method in enumerate(methods):
                    values = [index.get((c, method), {}).get(metric, 0) or 0 for c in cases]
                    ax.bar([i + m * width for i in range(len(cases))], values, width, label=method)
                ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
                ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
                ax.set_title(f"{direction}: {label}", fontsize=9)
                ax.set_ylabel(unit, fontsize=8)
                if metric == "speedup_vs_naive":
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(PlainLogFormatter())
                    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
                    ax.axhline(1, color="gray", linewidth=0.5)
                ax.grid(axis="y", alpha=0.3)
        # One legend for the figure: every panel shows the same methods in the same colours.
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(
            handles,
            labels,
            loc="upper center",
            ncol=len(methods),
            fontsize=8,
            bbox_to_anchor=(0.5, 0.965),
        )
        figure.suptitle(f"lc_cuda benchmark, {dtype}, {result['device_name']}")
        figure.tight_layout(rect=(0, 0, 1, 0.93))
        path = directory / f"chart_{dtype}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def ceilings_when(result: dict) -> str:
    """How the run's ceilings were taken: runs since the best of two measurements say so, and
    what each measured (runs before measured them once, at the start)."""
    measurements = result.get("ceiling_measurements")
    if not measurements:
        return ""
    if len(measurements) == 1:
        return " (at its start only: the measurement at its end failed)"
    copies = " and ".join(f"{m['copy_GBps']:.0f}" for m in measurements)
    return f" (the better of each at its start and its end; copy {copies} GB/s)"


def results_markdown(result: dict, charts: list[Path], markdown_path: Path) -> str:
    lines = [
        "# lc_cuda benchmark results",
        "",
        f"Generated by `benchmarks/report.py` from `{result['json_name']}`.",
        "",
        f"- device: {result['device_name']}",
        f"- date: {result['date']}",
        f"- torch {result['torch_version']}, CUDA {result['cuda_version']}, "
        f"lc_cuda build: {json.dumps(result['build_info'])}",
        f"- command: `{result['command']}`",
        f"- ceilings measured in the same run{ceilings_when(result)}: copy "
        f"{result['ceilings']['copy_GBps']:.0f} GB/s; "
        + ", ".join(
            f"{k} matmul {v:.1f} TFLOP/s" for k, v in result["ceilings"]["matmul_TFLOPs"].items()
        ),
        "- floor = max(fewest bytes / copy bandwidth, flops / matmul rate of the precision, "
        "or float32's where that is faster); "
        "times are medians of CUDA-event timings (perf_counter on the CPU)"
        + (
            f", the calls of a case's torch methods taken in {result['rounds']} rounds, the "
            "methods in turn in each (JAX and Keras run in processes of their own)."
            if result.get("rounds", 1) > 1
            else "."
        ),
        f"- machine load: {load_text(result)}",
        f"- a cell is flagged, and left out of the means, where its calls' interquartile range "
        f"exceeds {NOISY_SPREAD:.0%} of their median (NOISY) or it is faster than the floor "
        "(BELOW FLOOR)",
        *([f"- **{run_verdict(result)}**"] if run_verdict(result) else []),
        "",
        "Methods:",
        "",
        *(
            f"- `{name}`: {result['method_descriptions'].get(name, '')}"
            for name in result["methods"]
        ),
        "",
        "## Geometric means over the cases",
        "",
        "| dtype | direction | method | cases (flagged) | x floor | speed-up vs naive | "
        "vs fallback |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary(result):
        ratios = (row[k] for k in ("times_floor", "speedup_vs_naive", "speedup_vs_fallback"))
        cases = f"{row['cases']}" + (f" ({row['flagged']})" if row.get("flagged") else "")
        lines.append(
            f"| {row['dtype']} | {row['direction']} | {row['method']} | {cases} | "
            + " | ".join(ratio(value).strip() for value in ratios)
            + " |"
        )
    lines += [
        "",
        "## Every measurement",
        "",
        "ms, multiple of the floor, and peak extra memory in MiB where measured (resident-set "
        "high-water mark less the resident size before the call, outputs included; not measured "
        "for JAX and Keras). lc_cuda's lead: the fastest other method's time over lc_cuda's "
        "(above 1: lc_cuda is ahead of every other method), leaving out lc_cuda forced onto its "
        "own lesser paths (" + ", ".join(LC_CUDA_VARIANTS) + "); lc_cuda_avx2's lead: the same "
        "for the AVX2 path, against the BLAS path too.",
        "",
    ]
    methods = result["methods"]
    leaders = [m for m in LEADERS if m in methods and len(methods) > 1]
    lines.append(
        "| case | dtype | direction | floor ms | "
        + " | ".join([*methods, *(f"{m}'s lead" for m in leaders)])
        + " |"
    )
    lines.append("|---|---|---|---|" + "---|" * (len(methods) + len(leaders)))
    index = {(r["case"], r["dtype"], r["direction"], r["method"]): r for r in result["records"]}
    floors = {(r["case"], r["dtype"], r["direction"]): r["floor_ms"] for r in result["records"]}
    for (case, dtype, direction), floor in floors.items():
        row = {m: index.get((case, dtype, direction, m)) for m in methods}
        cells = [cell(record) + memory_cell(record) for record in row.values()]
        cells += [lead_cell(row, leader) for leader in leaders]
        lines.append(
            f"| {case} | {dtype} | {direction} | {floor:.4f} | " + " | ".join(cells) + " |"
        )
    lines += memory_markdown(result.get("memory_check"))
    if charts:
        lines += ["", "## Charts", ""]
        for chart in charts:
            relative = os.path.relpath(chart, markdown_path.parent)
            lines.append(f"![{chart.stem}]({relative})")
    return "\n".join(lines) + "\n"


def with_section(document: str, markdown: str, title: str) -> str:
    """document with a run's markdown as its '## title' section (headings one level down),
    in place of the section of that title where there is one, else at the end."""
    lines = markdown.splitlines()
    body = ["#" + line if line.startswith("##") else line for line in lines[1:]]
    section = "\n".join([f"## {title}", *body]).strip() + "\n"
    heading = f"\n## {title}\n"
    if heading in document:
        before, rest = document.split(heading, 1)
        after = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        return before.rstrip() + "\n\n" + section + ("\n## " + after if after else "")
    return document.rstrip() + "\n\n" + section


def run_sections(document: str) -> str:
    """The '## ' sections of document that --section runs wrote (each opens with its own
    'Generated by' line), in order: a run of the main page keeps them."""
    kept = []
    for part in document.split("\n## ")[1:]:
        body = part.split("\n", 1)[1] if "\n" in part else ""
        if body.lstrip().startswith("Generated by `benchmarks/report.py`"):
            kept.append("## " + part.rstrip() + "\n")
    return "\n".join(kept)


def write_markdown(result: dict, charts: list[Path], path: Path, section: str | None) -> None:
    """RESULTS.md made from the run (keeping the sections other runs wrote there), or with the
    run as its section `section`."""
    markdown = results_markdown(result, charts, path)
    document = path.read_text() if path.exists() else ""
    if section is not None:
        markdown = with_section(document, markdown, section)
    elif kept := run_sections(document):
        markdown = markdown.rstrip() + "\n\n" + kept
    path.write_text(markdown)


def memory_markdown(check: dict | None) -> list[str]:
    """The CPU run's check of the extra memory at a large batch (bench.memory_check)."""
    if not check:
        return []
    mib = 2**20
    lines = [
        "",
        f"## Extra host memory, {check['case']} at N={check['batch']} (float32)",
        "",
        "Peak resident memory one call adds (outputs included), measured in its own process with "
        "`MALLOC_MMAP_THRESHOLD_=65536`; beyond outputs = that peak less the output (forward) or "
        "the output and the three gradients (forward+backward). The CPU kernels' bound is "
        f"`LC_CUDA_CPU_SCRATCH_MB` = {check['budget_bytes'] / mib:.0f} MiB.",
        "",
        "| method | direction | peak extra MiB | outputs MiB | beyond outputs MiB | within bound |",
        "|---|---|---|---|---|---|",
    ]
    for method, directions in check["peak_extra_bytes"].items():
        for direction, peak in directions.items():
            outputs = check["outputs_bytes"][direction]
            beyond = peak - outputs
            within = "yes" if beyond <= check["budget_bytes"] else "no"
            lines.append(
                f"| {method} | {direction} | {peak / mib:.0f} | {outputs / mib:.0f} | "
                f"{beyond / mib:.0f} | {within} |"
            )
    return lines


def write_all(
    result: dict, out_dir: Path, results_md: Path | None, section: str | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    derive(result["records"])
    result["summary"] = summary(result)
    json_path = out_dir / "results.json"
    result["json_name"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=1))
    write_csv(result, out_dir / "results.csv")
    charts = write_charts(result, out_dir)
    if results_md is not None:
        write_markdown(result, charts, results_md, section)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Regenerate the floors, results.json and .csv, charts and RESULTS.md"
    )
    parser.add_argument("results_json", type=Path)
    parser.add_argument("--results-md", type=Path, default=None)
    parser.add_argument("--section", help="write the run as this section of --results-md")
    args = parser.parse_args()
    result = json.loads(args.results_json.read_text())
    # Each floor again from the record's bytes and flops and the run's ceilings, so that a
    # regenerated report follows the floor's definition now (ceilings.floor_of).
    for record in result["records"]:
        record["floor_ms"] = floor_of(
            record["bytes"], record["flops"], result["ceilings"], record["dtype"]
        )
    write_all(result, args.results_json.parent, args.results_md, args.section)
    print_table(result)


if __name__ == "__main__":
    main()
