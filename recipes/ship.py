"""Copy a trained run's exported model into a shipped model folder, weights in bf16.

    python recipes/ship.py runs/tokenizer/model models/regvq-tokenizer

The destination's model card (README.md) is kept; config.json and model.safetensors are replaced. The config's
free-form info is kept from the run (e.g. the model a fine-tune started from). Priors record the tokenizer their
tokens were made with, by name and sha256, so encode their data with the shipped tokenizer (after shipping it).
"""

import argparse
from pathlib import Path

import torch

from regvq_cli.engine.checkpoint import load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a model folder written by train-tokenizer / train-prior (RUN/model)")
    ap.add_argument("dest", type=Path, help="the shipped folder (models/NAME)")
    args = ap.parse_args()
    model = load_model(args.src)
    # card=None keeps the destination's README.md, or writes a minimal one where there is none
    save_model(model, args.dest, info=model.regvq_record.get("info"), dtype=torch.bfloat16)
    print(f"{args.src} -> {args.dest} (bf16)")


if __name__ == "__main__":
    main()
