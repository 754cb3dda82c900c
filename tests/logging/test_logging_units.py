import json

import pytest

from olmo_train.logging.jsonl import MetricsFile, read_metrics
from olmo_train.logging.secrets import MASK, is_secret_name, redact, redact_text
from olmo_train.logging.wandb_reader import (WandbFileError, read_history, read_records, run_files,
                                            wait_until_finished)
from olmo_train.logging.wandb_run import load_or_create_run_id, resolve_mode


@pytest.mark.parametrize("name,secret", [("WANDB_API_KEY", True), ("hf_token", True), ("password", True),
                                         ("AWS_SECRET_ACCESS_KEY", True), ("eos_token_id", False),
                                         ("global_batch_tokens", False), ("tokenizer", False)],
                         ids=lambda v: str(v))
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_redact_masks_keys_and_env_values():
    env = {"WANDB_API_KEY": "abcdef123456", "PATH": "/usr/bin"}
    tree = {"logger": {"api_key": "x-y", "note": "key is abcdef123456"}, "eos_token_id": 3, "path": "/usr/bin"}
    assert redact(tree, env) == {"logger": {"api_key": MASK, "note": f"key is {MASK}"}, "eos_token_id": 3,
                                 "path": "/usr/bin"}
    assert redact_text("abcdef123456!", env) == f"{MASK}!"


def test_wandb_mode_from_key():
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k" * 40}) == "online"
    assert resolve_mode("disabled", {"WANDB_API_KEY": "k" * 40}) == "disabled"


def test_run_id_is_kept(tmp_path):
    first = load_or_create_run_id(tmp_path)
    assert load_or_create_run_id(tmp_path) == first
    assert load_or_create_run_id(tmp_path, "fromckpt") == "fromckpt" == load_or_create_run_id(tmp_path)


def test_metrics_file_drops_steps_that_will_be_redone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    f = MetricsFile(path)
    f.start(resume_step=5)  # checkpoint at step 4: steps 5.. are trained again
    assert f.high_water == 7
    f.write({"step": 5, "loss": float("nan")})
    f.close()
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] is None


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    import wandb

    root = tmp_path_factory.mktemp("wb")
    run = wandb.init(project="t", id="rdr1", dir=str(root), mode="offline", config={"big": "x" * 100_000},
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    for step in range(5):
        run.log({"loss": 1.0 / (step + 1), "nested": {"a": step}}, step=step)
    run.finish()
    path = run_files(root / "wandb", "rdr1")[0]
    assert wait_until_finished(path)
    return path


def test_reader_reads_history_and_records_spanning_blocks(offline_run):
    rows = read_history(offline_run)
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4] and rows[2]["loss"] == pytest.approx(1 / 3)
    updates = []  # W&B puts the initial config in the run record, later changes in config records
    for r in read_records(offline_run):
        kind = r.WhichOneof("record_type")
        updates += list(r.run.config.update) if kind == "run" else list(r.config.update) if kind == "config" else []
    big = [json.loads(item.value_json) for item in updates if item.key == "big"][:1]
    assert big == ["x" * 100_000]  # a 100 kB record crosses 32 KiB blocks


def test_reader_stops_at_a_torn_tail_and_rejects_corruption(offline_run, tmp_path):
    data = offline_run.read_bytes()
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(data[: len(data) - 50])
    whole, cut = list(read_records(offline_run)), list(read_records(torn))
    assert 0 < len(cut) < len(whole) and cut == whole[:len(cut)]
    bad = bytearray(data)
    bad[200] ^= 0xFF
    (tmp_path / "bad.wandb").write_bytes(bytes(bad))
    with pytest.raises(WandbFileError, match="checksum"):
        list(read_records(tmp_path / "bad.wandb"))
    (tmp_path / "x.wandb").write_bytes(b"not wandb")
    with pytest.raises(WandbFileError, match="header"):
        list(read_records(tmp_path / "x.wandb"))
