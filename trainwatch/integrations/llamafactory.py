"""LLaMA-Factory: its ``run_exp`` with a :class:`~trainwatch.Diagnoser` attached, configured from the same config.

LLaMA-Factory takes callbacks only from Python (``run_exp(args, callbacks=[...])``), and ``llamafactory-cli train
config.yaml`` has no place for one. This module is both::

    python -m trainwatch.integrations.llamafactory config.yaml [key=value ...]   # as llamafactory-cli train

    from trainwatch.integrations.llamafactory import run_exp
    diagnoser = run_exp({"stage": "sft", ...}, stop_on=("exploding",))

The config's ``trainwatch`` key (LLaMA-Factory itself rejects unknown keys) holds the Diagnoser's arguments, the
same names (``stop_on: [exploding, flat]``, any rule threshold); arguments given to :func:`run_exp` win. The
Diagnoser's ``max_seq_length`` is the config's ``cutoff_len`` (LLaMA-Factory cuts examples there, and its training
arguments do not carry it), so the pre-flight counts responses cut away.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from llamafactory.hparams import DataArguments, read_args
from llamafactory.train.tuner import run_exp as llamafactory_run_exp
from transformers import TrainerCallback

from trainwatch.callbacks import Diagnoser

OPTIONS_KEY = "trainwatch"
USAGE = "usage: python -m trainwatch.integrations.llamafactory config.yaml [key=value ...]"


def diagnoser_for(config: dict[str, Any], **options: Any) -> Diagnoser:
    """The Diagnoser for a LLaMA-Factory config: its ``trainwatch`` key, then ``options``, ``cutoff_len`` as the
    max sequence length unless set. Raises ValueError or TypeError on an unknown kind or threshold."""
    settings = {**(config.get(OPTIONS_KEY) or {}), **options}
    cutoff_default = next(f.default for f in dataclasses.fields(DataArguments) if f.name == "cutoff_len")
    settings.setdefault("max_seq_length", config.get("cutoff_len", cutoff_default))
    return Diagnoser(**settings)


def run_exp(
    args: dict[str, Any] | None = None, *, callbacks: Sequence[TrainerCallback] = (), **options: Any
) -> Diagnoser:
    """LLaMA-Factory's ``run_exp`` with a Diagnoser among ``callbacks``; returns it, its findings read after training.

    ``args`` as LLaMA-Factory takes them; None reads the YAML or JSON file named on the command line, with its
    ``key=value`` overrides, as ``llamafactory-cli train`` does.
    """
    config = _read_config(args)
    diagnoser = diagnoser_for(config, **options)
    _train(config, [*callbacks, diagnoser])
    return diagnoser


def main() -> int:
    """``python -m trainwatch.integrations.llamafactory config.yaml [key=value ...]``: exit 0 when the run is
    healthy, 1 when a failure was diagnosed (as ``trainwatch analyze``), 2 on a config trainwatch cannot use."""
    try:
        config = _read_config(None)
        diagnoser = diagnoser_for(config)
    except (ValueError, TypeError, OSError, yaml.YAMLError) as error:
        print(f"trainwatch: {error}", file=sys.stderr)
        return 2
    _train(config, [diagnoser])
    return 0 if diagnoser.verdict == "healthy" else 1


def _read_config(args: dict[str, Any] | None) -> dict[str, Any]:
    config = read_args(args)
    if not isinstance(config, dict):
        raise TypeError(USAGE)
    return config


def _train(config: dict[str, Any], callbacks: list[TrainerCallback]) -> None:
    """LLaMA-Factory's own run, without the key it does not know."""
    llamafactory_run_exp({k: v for k, v in config.items() if k != OPTIONS_KEY}, callbacks=callbacks)


if __name__ == "__main__":
    raise SystemExit(main())
