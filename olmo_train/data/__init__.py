"""Token memmaps -> deterministic, resumable training batches (see docs/interfaces.md, Data)."""

from olmo_train.data.batch import IGNORE_INDEX, Batch
from olmo_train.data.config import DataConfig
from olmo_train.data.eval import EvalLoader, EvalResult, build_eval_loader, evaluate
from olmo_train.data.loader import TrainLoader, build_train_loader


def default_tokenizer(cache_dir: str, *, vocab_size: int = 8192):  # -> tokenizers.Tokenizer
    """The byte-level BPE (vocab 8192, `<|endoftext|>` = eos) trained on the stdlib corpus; cached."""
    from data_pipelines.stdlib_corpus import default_tokenizer as build

    return build(cache_dir, vocab_size=vocab_size)


__all__ = ["IGNORE_INDEX", "Batch", "DataConfig", "EvalLoader", "EvalResult", "TrainLoader", "build_eval_loader",
           "build_train_loader", "default_tokenizer", "evaluate"]
