"""`regvq_cli/engine/jpeg.py` as it was at a commit of this repository, imported as a module of its own: the
"before" side of the before/after runs in resize_weights/ and host_syncs/ (read with `git show`, so the checkout
needs that commit)."""
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

BEFORE_WEIGHTS_ONCE = "15ce46a"  # resize_batch building its weights for every chunk
BEFORE_ASYNC_COPIES = "a75e41c"  # batch_pixels' small copies from pageable memory


def source_at(rev: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:regvq_cli/engine/jpeg.py"], capture_output=True, text=True,
                          check=True).stdout


def jpeg_at(rev: str):
    path = Path(tempfile.mkdtemp()) / f"jpeg_{rev}.py"
    path.write_text(source_at(rev))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":  # `python jpeg_at.py REV`: the source, for a run that replaces the file itself
    sys.stdout.write(source_at(sys.argv[1]))
