"""`regvq encode` with `engine.jpeg.batch_pixels` as it was before its small copies to the device became
asynchronous (`before`, from jpeg_before.py beside this file, which brings its own resize_batch) or as it is
(`now`); the command's arguments follow: `python probe.py before -q encode ...`."""
import importlib.util
import sys
from pathlib import Path

from regvq_cli.engine import jpeg

if sys.argv[1] == "before":
    spec = importlib.util.spec_from_file_location("jpeg_before", Path(__file__).with_name("jpeg_before.py"))
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    jpeg.batch_pixels = before.batch_pixels
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[2:])
