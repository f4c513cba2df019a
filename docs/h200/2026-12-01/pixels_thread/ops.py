"""The default tokenizer's encode of a batch of 128 (bf16, channels-last, eager, no CUDA graph) under
torch.profiler: GPU time by operator and by kernel, to name the non-vectorised elementwise kernels that took about
5 ms a batch in encode's profile (profile.py)."""
import torch

from regvq_cli.engine.resolve import load
from regvq_cli.engine.runtime import prepare_tokenizer

runner = prepare_tokenizer(load("regvq-tokenizer"), torch.device("cuda"), torch.bfloat16, cuda_graphs=False)
x = torch.randint(0, 256, (128, 3, 256, 256), dtype=torch.uint8, device="cuda")
for _ in range(3):
    runner.encode_uint8(x)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                            record_shapes=True) as prof:
    for _ in range(5):
        runner.encode_uint8(x)
    torch.cuda.synchronize()
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=30,
                                                           max_name_column_width=60, max_shapes_column_width=70))
