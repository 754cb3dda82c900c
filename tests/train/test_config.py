"""Hydra composition: every group option gives the right type, stable overrides work, bad keys are errors."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from olmo_train.distributed.config import DeepSpeedConfig, DistributedConfig, FSDP2Config
from olmo_train.errors import ConfigError
from olmo_train.model import OlmoHybridConfig, presets
from olmo_train.train.app import CONFIG_DIR, to_config
from olmo_train.train.config import Config, batch_layout, register_configs

register_configs()


def make(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_defaults_are_the_cpu_tiny_run():
    cfg = make()
    assert isinstance(cfg, Config)
    assert cfg.model == presets.tiny()
    assert type(cfg.distributed) is DistributedConfig and cfg.distributed.backend == "single"
    assert cfg.cluster.name == "cpu" and cfg.cluster.device == "cpu"
    assert cfg.run.dir == "runs/cpu-tiny"


@pytest.mark.parametrize("name", presets.names(), ids=presets.names())
def test_model_options(name):
    cfg = make(f"model={name}")
    assert isinstance(cfg.model, OlmoHybridConfig) and cfg.model == presets.get(name)


@pytest.mark.parametrize("name,cls", [("single", DistributedConfig), ("fsdp2", FSDP2Config),
                                      ("deepspeed", DeepSpeedConfig)], ids=["single", "fsdp2", "deepspeed"])
def test_distributed_options(name, cls):
    cfg = make(f"distributed={name}")
    assert type(cfg.distributed) is cls and cfg.distributed.backend == name


def test_subclass_fields_and_overrides_survive():
    cfg = make("distributed=fsdp2", "distributed.hsdp_shard_size=2", "distributed.param_dtype=bfloat16")
    assert cfg.distributed.hsdp_shard_size == 2 and cfg.distributed.param_dtype == "bfloat16"
    cfg = make("distributed=deepspeed", "distributed.zero_stage=1")
    assert cfg.distributed.zero_stage == 1


@pytest.mark.parametrize("name,peak,mb", [("cpu", 1e11, 4), ("h100", 989e12, 1), ("b200", 2.25e15, 2)],
                         ids=["cpu", "h100", "b200"])
def test_cluster_options(name, peak, mb):
    cfg = make(f"cluster={name}")
    assert cfg.cluster.name == name and cfg.cluster.peak_flops == peak and cfg.micro_batch_size == mb
    assert (cfg.cluster.gpus_per_node == 8) == (name != "cpu")


def test_reference_experiment_is_the_recipe():
    cfg = make("experiment=olmo_hybrid_7b")
    assert cfg.model == presets.olmo_hybrid_7b()
    assert type(cfg.distributed) is FSDP2Config
    assert (cfg.distributed.param_dtype, cfg.distributed.reduce_dtype) == ("bfloat16", "float32")
    t = cfg.trainer
    assert (t.global_batch_tokens, t.seq_len, t.grad_clip, t.z_loss) == (4_194_304, 8192, 1.0, 1e-5)
    o, s = t.optimizer, t.scheduler
    assert (o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.decay_embeddings) == (3e-4, 0.9, 0.95, 1e-8, 0.1, False)
    assert (s.warmup_steps, s.final_lr_ratio) == (2000, 0.1)
    assert cfg.checkpoint.interval == 1000 and cfg.cluster.name == "h100"
    assert batch_layout(cfg, 512) == (512, 1)
    # the command line wins over the experiment's own choices
    assert make("experiment=olmo_hybrid_7b", "cluster=b200").cluster.name == "b200"


def test_stable_overrides():
    cfg = make("run.dir=/tmp/x", "seed=7", "model=small", "distributed=deepspeed", "cluster=h100",
               "trainer.max_steps=5", "trainer.global_batch_tokens=2048", "trainer.micro_batch_size=3",
               "trainer.seq_len=128", "checkpoint.interval=4", "checkpoint.keep=9", "logger.wandb.mode=offline",
               "experiment=cpu_tiny")
    assert (cfg.run.dir, cfg.seed, cfg.model, cfg.distributed.backend) == ("/tmp/x", 7, presets.small(), "deepspeed")
    assert (cfg.trainer.max_steps, cfg.trainer.global_batch_tokens, cfg.micro_batch_size, cfg.trainer.seq_len) == (
        5, 2048, 3, 128)
    assert (cfg.checkpoint.interval, cfg.checkpoint.keep, cfg.logger.wandb.mode) == (4, 9, "offline")
    for mode in ("online", "disabled"):
        assert make(f"logger.wandb.mode={mode}").logger.wandb.mode == mode


@pytest.mark.parametrize("override", ["trainer.max_step=3", "+trainer.foo=1", "distributed.zero_stage=2",
                                      "model.d_modle=64", "+cluster.gpus=4"],
                         ids=["misspelt", "new-key", "other-subclass-key", "model-typo", "new-cluster-key"])
def test_unknown_keys_are_errors(override):
    with pytest.raises((ConfigCompositionException, ConfigError), match="foo|max_step|zero_stage|d_modle|gpus"):
        make(override)


@pytest.mark.parametrize("override,field", [("logger.wandb.mode=loud", "logger.wandb.mode"),
                                            ("distributed=fsdp2 distributed.param_dtype=fp8", "param_dtype"),
                                            ("trainer.global_batch_tokens=1000", "global_batch_tokens"),
                                            ("schema_version=0", "schema_version"),
                                            ("cluster.device=tpu", "cluster.device")],
                         ids=["wandb-mode", "dtype", "batch-not-multiple", "schema", "device"])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        make(*override.split())


def test_global_batch_the_world_cannot_form():
    cfg = make("trainer.global_batch_tokens=3072", "trainer.seq_len=256", "trainer.micro_batch_size=4")
    assert batch_layout(cfg, 1) == (12, 3)
    with pytest.raises(ConfigError, match=r"12 sequences.*world size 2 x micro-batch 4 = 8"):
        batch_layout(cfg, 2)


def test_config_dump_round_trips_and_hides_secrets(tmp_path, monkeypatch):
    from olmo_train.train.build import write_config

    monkeypatch.setenv("WANDB_API_KEY", "sekrit-key-123456")
    cfg = make(f"run.dir={tmp_path}", "run.name=sekrit-key-123456")
    write_config(tmp_path, cfg)
    write_config(tmp_path, cfg)
    assert sorted(p.name for p in tmp_path.glob("config*.yaml")) == ["config.0.yaml", "config.1.yaml", "config.yaml"]
    text = (tmp_path / "config.yaml").read_text()
    assert "sekrit-key-123456" not in text and "***" in text
    loaded = OmegaConf.load(tmp_path / "config.yaml")
    assert loaded.trainer.max_steps == cfg.trainer.max_steps and loaded.schema_version == 1
