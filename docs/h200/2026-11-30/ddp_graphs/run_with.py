"""Run a script with torch settings the training and inference code do not expose, for side-by-side measurements:

    python docs/h200/2026-11-30/ddp_graphs/run_with.py [--no-optimize-ddp] [--cudnn-benchmark] SCRIPT ARGS...

--no-optimize-ddp: torch._dynamo.config.optimize_ddp = False (compiled graphs under DDP are not split at its
gradient buckets). Works under torchrun (each process runs this file).
"""
import runpy, sys

args = sys.argv[1:]
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag == "--no-optimize-ddp":
        import torch._dynamo
        torch._dynamo.config.optimize_ddp = False
    elif flag == "--cudnn-benchmark":
        import torch
        torch.backends.cudnn.benchmark = True
    else:
        raise SystemExit(f"unknown flag {flag}")
sys.argv = args
sys.path.insert(0, __import__("os").path.dirname(args[0]))
runpy.run_path(args[0], run_name="__main__")
