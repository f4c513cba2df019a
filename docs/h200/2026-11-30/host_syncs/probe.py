"""`regvq encode` with `engine.jpeg.batch_pixels` as it was before its small copies to the device became
asynchronous (`before`, read from git by ../jpeg_at.py, with its own resize_batch) or as it is
(`now`); the command's arguments follow: `python probe.py before -q encode ...`."""
import sys
from pathlib import Path

from regvq_cli.engine import jpeg

if sys.argv[1] == "before":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from jpeg_at import BEFORE_ASYNC_COPIES, jpeg_at

    jpeg.batch_pixels = jpeg_at(BEFORE_ASYNC_COPIES).batch_pixels
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[2:])
