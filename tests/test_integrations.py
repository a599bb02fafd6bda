"""The Axolotl plugin and the LLaMA-Factory wrapper, against the frameworks' real code.

Axolotl's plugin interface (``BasePlugin``, its loader, its config schema merged with the plugin's) is imported from
a real ``axolotl`` install: ``pip install --no-deps axolotl addict`` is all it needs, as Axolotl's pinned
dependencies (transformers 5.16, trl 1.9, triton, ...) cannot live beside this project's. A real Axolotl run, and
any LLaMA-Factory run (torchaudio, trl <= 0.24), need an interpreter of their own: name it in
``TRAINWATCH_AXOLOTL_PYTHON`` / ``TRAINWATCH_LLAMAFACTORY_PYTHON`` (docs/integrations.md says how it was built) and
these tests train the shipped tiny model through the framework's own entry point, in a subprocess.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from trainwatch import Diagnoser
from trainwatch.testing import letter_progressions, tiny_trainer

ASSET = Path(__file__).resolve().parents[1] / "trainwatch" / "assets" / "tiny-llama"
PLUGIN = "trainwatch.integrations.axolotl.TrainwatchPlugin"
AXOLOTL_PYTHON = os.environ.get("TRAINWATCH_AXOLOTL_PYTHON")
LLAMAFACTORY_PYTHON = os.environ.get("TRAINWATCH_LLAMAFACTORY_PYTHON")


def axolotl_base():
    return pytest.importorskip(
        "axolotl.integrations.base", reason="axolotl is not installed (pip install --no-deps axolotl addict)"
    )


# -- Axolotl: the plugin interface -------------------------------------------------------------------------------
def test_the_plugin_is_an_axolotl_plugin_that_axolotl_loads():
    base = axolotl_base()
    from trainwatch.integrations.axolotl import TrainwatchPlugin

    plugin = base.load_plugin(PLUGIN)
    assert isinstance(plugin, base.BasePlugin) and isinstance(plugin, TrainwatchPlugin)
    for hook in ("get_input_args", "add_callbacks_pre_trainer"):
        ours, theirs = (
            inspect.signature(getattr(TrainwatchPlugin, hook)),
            inspect.signature(getattr(base.BasePlugin, hook)),
        )
        assert list(ours.parameters) == list(theirs.parameters), hook
    assert plugin.get_input_args() == "trainwatch.integrations.axolotl.TrainwatchArgs"


@pytest.fixture
def axolotl_config():
    """Axolotl's own validation of a config that names the plugin, as ``axolotl train config.yml`` runs it."""
    axolotl_base()
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    manager = PluginManager.get_instance()
    manager.register(PLUGIN)
    minimal = {
        "base_model": str(ASSET),
        "datasets": [{"path": "data.jsonl", "type": "alpaca"}],
        "micro_batch_size": 8,
        "learning_rate": 2e-4,
        "sequence_len": 64,
        "plugins": [PLUGIN],
    }
    yield lambda **extra: validate_config(DictDefault({**minimal, **extra}))
    manager.plugins.pop(PLUGIN, None)


def test_axolotl_validates_the_options_and_the_plugin_builds_the_diagnoser_from_them(axolotl_config):
    from trainwatch.integrations.axolotl import TrainwatchPlugin

    cfg = axolotl_config(
        trainwatch={"stop_on": ["exploding", "flat"], "patience_steps": 100, "max_loss": 50.0, "preflight": False}
    )
    (diagnoser,) = TrainwatchPlugin().add_callbacks_pre_trainer(cfg, model=None)
    assert isinstance(diagnoser, Diagnoser)
    assert diagnoser.stop_on == ("exploding", "flat") and diagnoser.preflight is False
    rules = {type(rule).__name__: rule for rule in diagnoser.engine.rules}
    assert rules["FlatRule"].patience_steps == 100 and rules["ExplodingRule"].max_loss == 50.0

    (default,) = TrainwatchPlugin().add_callbacks_pre_trainer(axolotl_config(), model=None)
    assert default.stop_on == () and default.preflight is True and default.thresholds == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stop_on": ["explode"]}, "Input should be 'exploding', 'flat' or 'overfitting'"),
        ({"patience": 3}, "unknown threshold(s) patience"),
    ],
)
def test_axolotl_rejects_a_misspelt_option_when_it_validates_the_config(axolotl_config, options, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trainwatch") as error:
        axolotl_config(trainwatch=options)
    assert message in str(error.value)


def test_the_plugins_diagnoser_stops_a_real_exploding_run(axolotl_config, tmp_path):
    from trainwatch.integrations.axolotl import TrainwatchPlugin

    (diagnoser,) = TrainwatchPlugin().add_callbacks_pre_trainer(
        axolotl_config(trainwatch={"stop_on": ["exploding"], "report": False}), model=None
    )
    trainer = tiny_trainer("exploding", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=60)
    trainer.train()
    assert diagnoser.verdict == "exploding" and trainer.state.global_step < 60


# -- the real frameworks, each in its own interpreter ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The shipped tiny llama shrunk to 2 layers of width 32 (random weights) with its tokenizer, and letter
    progressions as instruction/output records (prompt: 5 letters; response: the 11 that follow)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    config = AutoConfig.from_pretrained(
        ASSET,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path / "model")
    AutoTokenizer.from_pretrained(ASSET).save_pretrained(path / "model")
    good, _ = letter_progressions(256, 0)
    lines = [json.dumps({"instruction": g[:5], "input": "", "output": g[5:]}) for g in good]
    (path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return path


def run_in(python: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
    )


def diagnosis(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainwatch" / "diagnosis.json").read_text())


@pytest.mark.skipif(
    not AXOLOTL_PYTHON,
    reason="a real Axolotl run needs TRAINWATCH_AXOLOTL_PYTHON (an interpreter "
    "with axolotl's own dependencies: see docs/integrations.md)",
)
def test_a_real_axolotl_run_is_stopped_by_the_plugin(tiny_model_dir, tmp_path):
    """``python -m axolotl.cli.train config.yml``, a full fine-tune at lr 1 without clipping: the plugin, named in the
    YAML with ``stop_on: [exploding]``, stops it and writes its report; its pre-flight read ``sequence_len``."""
    output_dir = tmp_path / "out"
    config = {
        "base_model": str(tiny_model_dir / "model"),
        "datasets": [
            {
                "path": str(tiny_model_dir / "data.jsonl"),
                "ds_type": "json",
                "type": {
                    "field_instruction": "instruction",
                    "field_output": "output",
                    "format": "{instruction}\n",
                    "no_input_format": "{instruction}\n",
                },
            }
        ],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_num_proc": 1,
        "val_set_size": 0.0,
        "sequence_len": 32,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": 40,
        "learning_rate": 1.0,
        "max_grad_norm": 0.0,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": str(output_dir),
        "bf16": False,
        "fp16": False,
        "plugins": [PLUGIN],
        "trainwatch": {"stop_on": ["exploding"]},
    }
    (tmp_path / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    done = run_in(AXOLOTL_PYTHON, ["-m", "axolotl.cli.train", "config.yml"], tmp_path, AXOLOTL_DO_NOT_TRACK="1")
    assert done.returncode == 0, done.stderr[-3000:]
    report = diagnosis(output_dir)
    assert report["verdict"] == "exploding" and report["stopped_by"], report
    assert report["diagnoses"][0]["step"] < 40
    checks = {c["name"]: c for c in report["preflight"]["checks"]}
    assert "at 32 tokens" in checks["max sequence length"]["detail"], checks["max sequence length"]


@pytest.mark.skipif(
    not LLAMAFACTORY_PYTHON,
    reason="a real LLaMA-Factory run needs TRAINWATCH_LLAMAFACTORY_PYTHON "
    "(an interpreter with llamafactory and its own dependencies: see docs/integrations.md)",
)
def test_a_real_llamafactory_run_through_the_wrapper(tiny_model_dir, tmp_path):
    """``python -m trainwatch.integrations.llamafactory config.yaml`` as ``llamafactory-cli train config.yaml``: the
    config's ``trainwatch`` key stops an exploding full fine-tune (exit 1, as a diagnosed failure), the pre-flight
    knows ``cutoff_len``; a misspelt option is one line on stderr and exit 2, before any training."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "progressions.jsonl").write_text((tiny_model_dir / "data.jsonl").read_text())
    (tmp_path / "data" / "dataset_info.json").write_text(
        json.dumps({"progressions": {"file_name": "progressions.jsonl"}})
    )
    output_dir = tmp_path / "out"
    config = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": str(tiny_model_dir / "model"),
        "template": "empty",
        "dataset": "progressions",
        "dataset_dir": str(tmp_path / "data"),
        "cutoff_len": 32,
        "finetuning_type": "full",
        "disable_gradient_checkpointing": True,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "max_steps": 40,
        "learning_rate": 1.0,
        "max_grad_norm": 0.0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "trainwatch": {"stop_on": ["exploding"]},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    wrapper = ["-m", "trainwatch.integrations.llamafactory", "config.yaml"]
    done = run_in(LLAMAFACTORY_PYTHON, wrapper, tmp_path, DISABLE_VERSION_CHECK="1")
    assert done.returncode == 1, done.stderr[-3000:]
    report = diagnosis(output_dir)
    assert report["verdict"] == "exploding" and report["stopped_by"] and report["diagnoses"][0]["step"] < 40, report
    checks = {c["name"]: c for c in report["preflight"]["checks"]}
    assert "at 32 tokens" in checks["max sequence length"]["detail"], checks["max sequence length"]

    bad = run_in(LLAMAFACTORY_PYTHON, [*wrapper, "trainwatch.patience=3"], tmp_path, DISABLE_VERSION_CHECK="1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("trainwatch: unknown threshold")
