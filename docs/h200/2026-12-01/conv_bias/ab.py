"""Run a script with the tokenizer's convolution biases folded (`on`, as regvq now runs) or added by PyTorch's own
passes as before (`off`): `python ab.py on|off SCRIPT ARGS...` (SCRIPT a benchmark, or regvq_cli/__main__.py)."""
import runpy
import sys

mode, script = sys.argv[1], sys.argv[2]
if mode == "off":
    import regvq_cli.tokenizer.nets as nets

    nets.folds_biases = lambda *a: False
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
