"""Training: ``tokenizer`` (train_tokenizer), the loop both trainers share in ``loop`` (Trainer), shared machinery
in ``common`` and the data stream in ``data``."""
