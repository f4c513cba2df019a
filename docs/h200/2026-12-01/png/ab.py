"""Run a script with `regvq decode`'s PNGs as now (`huffman`: PNG_OPTIONS) or as before (`level1`: deflate level 1,
its default strategy): `python ab.py huffman|level1 SCRIPT ARGS...`."""
import runpy
import sys

mode, script = sys.argv[1], sys.argv[2]
if mode == "level1":
    from regvq_cli.engine import decode

    decode.PNG_OPTIONS = {"format": "PNG", "compress_level": 1}
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
