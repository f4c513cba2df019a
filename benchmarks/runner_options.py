"""The tokenizer runner's layout and graph options, as the tokenizer, encode and decode benchmarks take them."""

import argparse


def add_runner_options(p: argparse.ArgumentParser) -> None:
    """--[no-]channels-last and --[no-]cuda-graphs, with regvq's own defaults (args.channels_last None: as regvq)."""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last activations (default: as regvq, on for a GPU without --compile)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay the eager tokenizer as CUDA graphs on a CUDA device, as regvq does (default: on)")
