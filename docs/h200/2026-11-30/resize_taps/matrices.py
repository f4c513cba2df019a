"""`regvq` with resize_batch's matrix products (the CPU's path, and the GPU's before its kernels) on every device:
`python matrices.py encode ...`."""
import sys

import regvq_cli.engine.jpeg as jpeg

jpeg.triton_runs_on = lambda device: False
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[1:])
