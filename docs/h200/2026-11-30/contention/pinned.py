"""`regvq` with this process (and the loader workers it forks) held to its share of the host's CPU cores: under
torchrun, local rank r of n gets the r-th of n equal slices of the cores it may use; alone (or with SLICE="r/n"
set), that slice. `python pinned.py encode ...`."""
import os
import sys

cores = sorted(os.sched_getaffinity(0))
r, n = (int(v) for v in os.environ.get("SLICE", f"{os.environ.get('LOCAL_RANK', 0)}/"
                                       f"{os.environ.get('LOCAL_WORLD_SIZE', 1)}").split("/"))
share = len(cores) // n
os.sched_setaffinity(0, cores[r * share:(r + 1) * share])
print(f"slice {r}/{n}: cores {cores[r * share]}-{cores[(r + 1) * share - 1]}", file=sys.stderr)
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[1:])
