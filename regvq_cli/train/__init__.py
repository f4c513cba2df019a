"""Training loops: ``tokenizer`` (train_tokenizer), shared machinery in ``common`` and the data stream in ``data``."""
