"""Peak extra host memory of one call, from the kernel's resident-set high-water mark (Linux).

Writing 5 to /proc/self/clear_refs resets VmHWM to the current resident size, so VmHWM after the
call, less the resident size before it, is the most memory the call had in use at once (outputs
included). glibc serves large blocks from fresh mappings only above its mmap threshold, which it
raises as blocks are freed; set MALLOC_MMAP_THRESHOLD_ (e.g. 65536) in the environment so that
freed blocks are returned and re-touched, not reused unseen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def available() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def peak_extra_bytes(run: Callable[[], object]) -> int:
    """Bytes of resident memory that run() added at its peak (the result is dropped after)."""
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    result = run()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) * 1024
