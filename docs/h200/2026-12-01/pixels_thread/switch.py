"""`regvq` with Python's thread switch interval set to SWITCH seconds (default 0.005): how long a thread waiting
for the interpreter's lock waits before it asks the holder to let go, which the pixel threads, the loader's pinning
thread and the loop hand back and forth: `SWITCH=0.0005 python switch.py encode ...`."""
import os
import sys

sys.setswitchinterval(float(os.environ.get("SWITCH", "0.005")))
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[1:])
