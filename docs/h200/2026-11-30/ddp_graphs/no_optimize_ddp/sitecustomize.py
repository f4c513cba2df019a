# Put this folder first on PYTHONPATH to run any command with torch._dynamo.config.optimize_ddp = False (compiled
# graphs under DDP not split at its gradient buckets), e.g. a whole `regvq train-tokenizer` under torchrun.
import torch._dynamo

torch._dynamo.config.optimize_ddp = False
