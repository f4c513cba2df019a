"""Instructions of the int8 decode attention kernel as the H200 runs them, counted without a GPU: Triton compiles
the kernel for sm_90 (the launch `bench_attention.py --rows 512 --kv-cache int8 --triton 64:1:2` makes: 64 keys a
block, one warp, two stages, head size 64, pointers and the cache's strides divisible by 16, as Triton specialises
them at run time) and its bundled cuobjdump lists the machine code. Prints the counts by opcode and the total for
the kernel as it is, or for another copy of the kernel's file (the variants counted before the int8 query and the
byte permutes went into the kernel, `permute.py` and `dp4a.py`, are in this folder at commit 486dfa2).

    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/sass_count.py [--json]
    git show 486dfa2:regvq_cli/priors/decode_attention_kernel.py > /tmp/k.py
    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/sass_count.py --kernel /tmp/k.py   # an earlier form
"""
import argparse, collections, json, os, re, subprocess, tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ap = argparse.ArgumentParser()
ap.add_argument("--kernel", help="count the kernel in this copy of decode_attention_kernel.py instead")
ap.add_argument("--block", type=int, default=64, help="keys a loop iteration (the launch's BLOCK)")
ap.add_argument("--warps", type=int, default=1)
ap.add_argument("--json", action="store_true")
args = ap.parse_args()
if args.kernel:
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel_copy", args.kernel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decode_attention_kernel = module.decode_attention_kernel
else:
    from regvq_cli.priors.decode_attention_kernel import decode_attention_kernel

sig = {"QKV": "*bf16", "ROPE": "*fp32", "K": "*i8", "V": "*i8", "KS": "*fp32", "VS": "*fp32", "O": "*bf16",
       "VALID": "*i64", "LAST": "*i64", "scale": "fp32", **{s: "i32" for s in (
           "s_qkvb", "s_kb", "s_kh", "s_kl", "s_sb", "s_sh", "s_ob", "s_valid")}}
const = {"H": 12, "D": 64, "BLOCK": args.block, "HAS_VALID": False, "QUANT": True}
sig.update({k: "constexpr" for k in const})
names = list(sig)
aligned = ["QKV", "ROPE", "K", "V", "KS", "VS", "O", "VALID", "LAST", "s_qkvb", "s_kb", "s_kh", "s_kl", "s_ob"]
src = ASTSource(decode_attention_kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()},
                attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": args.warps, "num_stages": 2})
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(compiled.asm["cubin"])
    f.flush()
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
ops = collections.Counter(m.group(1).split(".")[0]
                          for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z0-9_.]+)", sass))
result = {"triton": triton.__version__, "kernel": args.kernel or "regvq_cli",
          "block": args.block, "warps": args.warps, "instructions": sum(ops.values()),
          # a thread's cached values (keys and values) per loop iteration
          "values_per_thread": 2 * args.block * 64 // (32 * args.warps), "by_opcode": dict(ops.most_common())}
if args.json:
    print(json.dumps(result, indent=1))
else:
    print(f"{result['kernel']}, {args.block} keys, {args.warps} warp(s): {result['instructions']} instructions for "
          f"{result['values_per_thread']} values a thread (triton {triton.__version__})")
    print("  " + "  ".join(f"{k} {v}" for k, v in ops.most_common(14)))
