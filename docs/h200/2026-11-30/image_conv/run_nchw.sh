#!/usr/bin/env bash
# Next on one H200 (about 4 minutes): the image-convolution kernel's GPU test; the layer alone with the kernel
# writing channels-last and NCHW (`probe_conv_in_triton.py --nchw`); vqgan-f16 at batch 128 compiled with the
# kernel and with cuDNN (the kernel's grid is now (pixel blocks, images), re-timed), and eager with cuDNN and with
# the kernel writing NCHW (ImageConv patched to take it eagerly, which the package does not do yet).
#   OUT=results bash docs/h200/2026-11-30/image_conv/run_nchw.sh
set -uo pipefail
export PYTHONPATH="$PWD"
python3 -m pytest -q -m gpu tests/test_image_conv.py > "$OUT/gpu_tests.txt" 2>&1; tail -1 "$OUT/gpu_tests.txt"
python3 docs/h200/2026-11-30/probe_conv_in_triton.py --nchw | cut -c1-120
B=(benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --json)
bench_as() {  # run the bench as SETTING: "cudnn" (the kernel unavailable) or "eager_nchw" (ImageConv takes the
  # kernel writing NCHW eagerly where its other conditions hold)
  python3 -c "
import runpy, sys, torch
import regvq_cli.tokenizer.image_conv as m
if sys.argv[1] == 'cudnn':
    m.available = lambda device: False
else:
    def forward(self, x):
        if x.dtype == torch.bfloat16 and not torch.is_grad_enabled() and x.is_cuda:
            return m.image_conv(x, self.weight, self.bias, channels_last=False)
        return torch.nn.Conv2d.forward(self, x)
    m.ImageConv.forward = forward
sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')" "$@"
}
show() { python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1].split('/')[-1], [(r['op'], r['images_per_s']) for r in d['rows']])" "$1"; }
python3 "${B[@]}" > "$OUT/tok_b128_eager_cudnn.json"; show "$OUT/tok_b128_eager_cudnn.json"
bench_as eager_nchw "${B[@]}" > "$OUT/tok_b128_eager_nchw.json"; show "$OUT/tok_b128_eager_nchw.json"
# inductor's generated code for the compiled networks, to read what each fused normalising kernel loads and stores
TORCH_LOGS=output_code python3 "${B[@]}" --compile > "$OUT/tok_b128_compile_kernel.json" 2> "$OUT/output_code.txt"
show "$OUT/tok_b128_compile_kernel.json"; gzip "$OUT/output_code.txt"
bench_as cudnn "${B[@]}" --compile > "$OUT/tok_b128_compile_cudnn.json"; show "$OUT/tok_b128_compile_cudnn.json"
