"""`regvq encode` with torch's tensor-sharing strategy set first (file_descriptor, the default, or file_system),
then the command's own arguments: `python sharing.py file_system -q encode ...`. The loader's workers send each
batch's tensors to the main process; with file_descriptor every tensor's storage costs a connection to the
worker's fd sharer (the profile showed about 10 per batch)."""
import sys

import torch.multiprocessing

torch.multiprocessing.set_sharing_strategy(sys.argv[1])
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[2:])
