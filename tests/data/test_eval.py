import math

import numpy as np
import pytest
import torch

from olmo_train.data import DataConfig, build_eval_loader, build_train_loader, evaluate
from olmo_train.errors import DataError
from tests.data.conftest import synthetic_tokens, write_tokens

SEQ = 16


def _cfg(src, **kw):
    return DataConfig(sources=[src], prefetch=0, **{"validation_fraction": 0.1, **kw})


def test_validation_is_held_out_and_split_over_ranks(token_source):
    cfg = _cfg(token_source)
    train = build_train_loader(cfg, seq_len=SEQ, global_batch_size=4, micro_batch_size=4, rank=0, world_size=1,
                               seed=0)
    src = train.dataset.sources[0]
    assert src.num_val == int(406 * 0.1) and src.num_train + src.num_val == 406
    _, local = train.dataset.locate(np.arange(train.dataset.num_instances), train.seed)
    assert local.max() < src.num_train  # training never reads the held-out tail
    loaders = [build_eval_loader(cfg, seq_len=SEQ, batch_size=3, rank=r, world_size=2) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 40 // 6
    ids = sorted(int(i) for ld in loaders for b in ld for i in b.sample_ids)
    assert ids == list(range(36))  # disjoint over ranks, the same instances every time
    first = loaders[0].batch(0)
    assert torch.equal(first.input_ids[0], torch.from_numpy(src.read(src.num_train)[:SEQ]))


def test_explicit_validation_sources(token_source, tmp_path):
    val = write_tokens(str(tmp_path / "val" / "p.npy"), synthetic_tokens(800, seed=7))
    cfg = _cfg(token_source, validation_sources=[val])
    assert build_train_loader(cfg, seq_len=SEQ, global_batch_size=4, micro_batch_size=4, rank=0, world_size=1,
                              seed=0).dataset.sources[0].num_val == 0
    assert build_eval_loader(cfg, seq_len=SEQ, batch_size=10, rank=0, world_size=1).num_instances == 50


def test_too_small_validation_split_is_an_error(token_source):
    with pytest.raises(DataError, match="fewer than one batch.*validation_fraction"):
        build_eval_loader(_cfg(token_source, validation_fraction=0.0), seq_len=SEQ, batch_size=2, rank=0,
                          world_size=1)


class Uniform(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.seen_doc_lens = []

    def forward(self, input_ids, doc_lens=None):
        self.seen_doc_lens.append(doc_lens)
        return torch.zeros(*input_ids.shape, self.vocab)


def test_perplexity_of_a_uniform_model_is_the_vocab_size(token_source):
    loader = build_eval_loader(_cfg(token_source), seq_len=SEQ, batch_size=4, rank=0, world_size=1)
    model = Uniform(1000)
    result = evaluate(model, loader)
    assert math.isclose(result.perplexity, 1000, rel_tol=1e-6)
    assert result.tokens == sum(b.num_label_tokens for b in loader) > 0
    assert all(d is not None and int(d.sum()) == 4 * SEQ for d in model.seen_doc_lens)
    assert evaluate(model, loader, max_batches=1).tokens == loader.batch(0).num_label_tokens
