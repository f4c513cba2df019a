"""Image reading (`images`), input listing (`inputs`), token shards (`shards`) and the
torch Dataset over them (`dataset`). Import the submodule you need; only `dataset` imports torch."""
