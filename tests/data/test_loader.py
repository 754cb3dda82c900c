import threading

import numpy as np
import pytest
import torch

from olmo_train.data import DataConfig, build_train_loader
from olmo_train.data.batch import IGNORE_INDEX, doc_lens_of
from olmo_train.errors import ConfigError, DataError
from tests.data.conftest import EOS, synthetic_tokens, write_tokens

SEQ = 16
G = 8


def _loader(src, *, world_size=1, rank=0, mb=1, gbs=G, seed=0, prefetch=0, **cfg):
    cfg = DataConfig(sources=[src], prefetch=prefetch, validation_fraction=cfg.pop("validation_fraction", 0.0),
                     **cfg)
    return build_train_loader(cfg, seq_len=SEQ, global_batch_size=gbs, micro_batch_size=mb, rank=rank,
                              world_size=world_size, seed=seed)


def _step_rows(loaders, step):
    """The step's rows over all ranks and micro-batches, in rank order -> [G, SEQ] (and labels, sample ids)."""
    batches = [b for ld in loaders for b in ld.micro_batches(step)]
    return (torch.cat([b.input_ids for b in batches]), torch.cat([b.labels for b in batches]),
            torch.cat([b.sample_ids for b in batches]))


@pytest.mark.parametrize("world_size", [1, 2, 4], ids=lambda w: f"ws{w}")
@pytest.mark.parametrize("mb", [1, 2], ids=lambda m: f"mb{m}")
def test_same_samples_per_step_for_any_world_and_micro_batch_size(token_source, world_size, mb):
    reference = [_loader(token_source)]
    loaders = [_loader(token_source, world_size=world_size, rank=r, mb=mb) for r in range(world_size)]
    for ld in loaders:
        assert len(ld.micro_batches(0)) == G // (world_size * mb)
    for step in [0, 1, 2, 7, 50, 51]:  # 50+ wraps past one pass (405 instances / 8)
        for got, want in zip(_step_rows(loaders, step), _step_rows(reference, step)):
            assert torch.equal(got, want)


def test_far_steps_are_computed_directly(token_source):
    """Step 10^9 (past 10^7 passes over the data) costs what step 0 costs: no replay, and ranks still agree."""
    far = 10**9
    whole = _step_rows([_loader(token_source)], far)
    split = _step_rows([_loader(token_source, world_size=2, rank=r, mb=2) for r in range(2)], far)
    assert all(torch.equal(a, b) for a, b in zip(whole, split))
    assert whole[2].tolist() == list(range(far * G, (far + 1) * G))


def test_order_depends_on_seed(token_source):
    a, b = _loader(token_source, seed=0), _loader(token_source, seed=1)
    assert not torch.equal(_step_rows([a], 0)[0], _step_rows([b], 0)[0])


def test_one_pass_visits_every_instance_once(token_source):
    ld = _loader(token_source)
    n = ld.dataset.num_instances
    assert n == 4000 // SEQ + 2500 // SEQ
    src, local = ld.dataset.locate(np.arange(n), ld.seed)
    assert np.array_equal(np.sort(local), np.arange(n))
    _, local2 = ld.dataset.locate(np.arange(n, 2 * n), ld.seed)
    assert np.array_equal(np.sort(local2), np.arange(n)) and not np.array_equal(local, local2)


@pytest.mark.parametrize("prefetch", [0, 2], ids=["direct", "prefetch"])
@pytest.mark.parametrize("resume_at", [0, 1, 3, 6], ids=lambda s: f"at{s}")
def test_resume_yields_what_an_uninterrupted_loader_yields(token_source, prefetch, resume_at):
    full = [b.input_ids for _, bs in _loader(token_source, mb=2).iter_from(0, num_steps=8) for b in bs]
    first = _loader(token_source, mb=2, prefetch=prefetch)
    got = []
    for _, bs in first.iter_from(0, num_steps=resume_at):
        got += [b.input_ids for b in bs]
    state = first.state_dict()
    assert set(state) == {"version", "step", "instances_consumed", "tokens_consumed", "fingerprint", "seed",
                          "seq_len", "global_batch_size"}
    assert state["tokens_consumed"] == resume_at * G * SEQ
    resumed = _loader(token_source, mb=2, prefetch=prefetch)
    resumed.load_state_dict(state)
    for _, bs in resumed.iter_from(num_steps=8 - resume_at):
        got += [b.input_ids for b in bs]
    assert len(got) == len(full) and all(torch.equal(a, b) for a, b in zip(got, full))


def test_resume_on_another_world_size(token_source):
    first = _loader(token_source)
    for _ in first.iter_from(0, num_steps=3):
        pass
    ranks = [_loader(token_source, world_size=4, rank=r, mb=2) for r in range(4)]
    for ld in ranks:
        ld.load_state_dict(first.state_dict())
    uninterrupted = [_loader(token_source)]
    for step in (3, 4):
        assert torch.equal(_step_rows(ranks, step)[0], _step_rows(uninterrupted, step)[0])


def test_resume_with_another_global_batch_size_continues_the_sample_stream(token_source):
    first = _loader(token_source, gbs=8)
    first.micro_batches(0), first.micro_batches(1)
    second = _loader(token_source, gbs=4)
    second.load_state_dict(first.state_dict())
    assert second.rank_samples(2).tolist() == [16, 17, 18, 19]
    assert second.rank_samples(3).tolist() == [20, 21, 22, 23]


def test_resume_with_changed_data_is_an_error_unless_allowed(token_source, tmp_path):
    state = _loader(token_source).state_dict()
    other = write_tokens(str(tmp_path / "other" / "p.npy"), synthetic_tokens(3000, seed=9))
    with pytest.raises(DataError, match="fingerprint"):
        _loader(other).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        _loader(token_source, seed=5).load_state_dict(state)
    _loader(other).load_state_dict(state, allow_data_change=True)
    _loader(other, allow_data_change=True).load_state_dict(state)


def test_labels_are_next_tokens_with_document_ends_ignored(token_source):
    ld = _loader(token_source)
    for step in range(5):
        for b in ld.micro_batches(step):
            x, y = b.input_ids, b.labels
            inner = y[:, :-1]
            expect = torch.where(x[:, :-1] == EOS, IGNORE_INDEX, x[:, 1:])
            assert torch.equal(inner, expect)
            assert y.dtype == torch.int64 and x.dtype == torch.int64
    # the last label is the token after the instance, or ignored at a file end
    src, local = ld.dataset.locate(np.arange(ld.dataset.num_instances), ld.seed)
    last_of_file0 = 4000 // SEQ - 1  # 4000 % 16 == 0: no token follows it
    row = ld.dataset.sources[0].read(last_of_file0)
    assert row[-1] == -1


def test_doc_lens_cut_at_eos_and_row_ends():
    ids = np.array([[5, EOS, 6, 7], [8, 9, EOS, EOS]])
    assert doc_lens_of(ids, EOS).tolist() == [2, 2, 3, 1]
    assert doc_lens_of(np.array([[1, 2, 3, EOS]]), EOS).tolist() == [4]


def test_batches_carry_doc_lens_over_the_flattened_batch(token_source):
    for b in _loader(token_source, mb=4).micro_batches(3):
        assert int(b.doc_lens.sum()) == b.input_ids.numel()
        cu = torch.cumsum(b.doc_lens, 0)
        flat = b.input_ids.view(-1)
        for end in cu.tolist():  # every document ends with EOS or at a row end
            assert flat[end - 1] == EOS or end % SEQ == 0
    assert _loader(token_source, document_mask=False).micro_batches(0)[0].doc_lens is None


def test_moving_a_batch_leaves_doc_lens_on_the_host(token_source):
    """The model plans packed-document kernels from doc_lens; on the host that costs no device sync."""
    batch = _loader(token_source, mb=2).micro_batches(0)[0]
    moved = batch.to("meta")
    assert moved.input_ids.device.type == moved.labels.device.type == "meta"
    assert moved.doc_lens is batch.doc_lens and batch.doc_lens.device.type == "cpu"


def test_batch_sizes_must_divide(token_source):
    with pytest.raises(ConfigError, match="not divisible by world_size 4 \\* micro_batch_size 3"):
        _loader(token_source, world_size=4, mb=3, gbs=8)


def test_prefetch_thread_reraises_and_stops(token_source, monkeypatch):
    ld = _loader(token_source, prefetch=2)
    prefetching = lambda: [t for t in threading.enumerate() if t.name == "olmo-data-prefetch"]  # noqa: E731
    it = ld.iter_from(0)
    next(it), next(it)
    assert len(prefetching()) == 1
    it.close()
    assert not prefetching()

    def broken(samples, seed):
        raise DataError("disk gone")

    monkeypatch.setattr(ld.dataset, "read_train", broken)
    with pytest.raises(DataError, match="disk gone"):
        next(ld.iter_from(0))
