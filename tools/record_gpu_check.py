"""Records that tools/gpu_check.sh passed on a GPU with the sources in this tree.

    python tools/record_gpu_check.py "NVIDIA H200, driver 580.159.04"

writes csrc/cuda/gpu_check_passed.txt (the sources' digest, the device and the date). A build of
the same sources then reports build_info()["gpu_verified"] and leaves the first-use check off by
default; any change to csrc/ makes the record stale again. Commit the file with the sources.
"""

import datetime
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(device: str) -> None:
    spec = importlib.util.spec_from_file_location("lc_cuda_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # setup() itself runs only under __main__
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup.GPU_CHECK_RECORD.write_text(
        f"sources {setup.kernel_sources_digest()}\ndevice {device}\ndate {date}\n"
    )
    print(f"recorded: {setup.GPU_CHECK_RECORD}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
