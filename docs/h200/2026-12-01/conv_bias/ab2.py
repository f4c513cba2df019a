"""Run a script with the decoder's last layer as nets.few_channels_conv (`on`, as regvq now runs) or as cuDNN's
convolution as before (`off`): `python ab2.py on|off SCRIPT ARGS...`."""
import runpy
import sys

import torch.nn.functional as F

mode, script = sys.argv[1], sys.argv[2]
if mode == "off":
    import regvq_cli.tokenizer.nets as nets

    nets.few_channels_conv = lambda x, w, b: F.conv2d(x, w, b, padding=1)
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
