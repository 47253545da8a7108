"""Runs a benchmark runner (jax_runner.py, keras_runner.py) on a task list in its own Python
process, so that its framework never shares a process with torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_tasks(runner: Path, tasks: list[dict], folder: str, env: dict) -> tuple[list[dict], str]:
    """The runner's records, or no records and why it failed (the last line it printed)."""
    tasks_path = os.path.join(folder, "tasks.json")
    results_path = os.path.join(folder, "results.json")
    Path(tasks_path).write_text(json.dumps(tasks))
    run = subprocess.run(
        [sys.executable, str(runner), tasks_path, results_path],
        capture_output=True,
        text=True,
        env=env,
    )
    if run.returncode != 0:
        return [], (run.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return json.loads(Path(results_path).read_text()), ""
