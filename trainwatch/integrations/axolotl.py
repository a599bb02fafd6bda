"""Axolotl plugin: watch an Axolotl run with trainwatch's :class:`~trainwatch.Diagnoser`.

In the Axolotl YAML::

    plugins:
      - trainwatch.integrations.axolotl.TrainwatchPlugin
    trainwatch:                 # optional: Diagnoser's arguments, the same names
      stop_on: [exploding, flat]
      patience_steps: 100       # any rule threshold, as Diagnoser(**thresholds) takes it

Axolotl merges :class:`TrainwatchArgs` into its config schema, so a misspelt kind or threshold is rejected when the
config is validated, before the model loads. The Diagnoser reads the rest from the Trainer Axolotl builds (its
``max_seq_length`` is Axolotl's ``sequence_len``).
"""

from __future__ import annotations

from typing import Any, Literal

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainwatch.callbacks import Diagnoser
from trainwatch.engine import build_rules
from trainwatch.findings import KINDS


class TrainwatchOptions(BaseModel):
    """:class:`~trainwatch.Diagnoser`'s arguments under the config's ``trainwatch`` key; any other key is a rule
    threshold (``max_loss``, ``patience_steps``, ...), checked against the rules when the config is validated."""

    model_config = ConfigDict(extra="allow")

    stop_on: list[Literal["exploding", "flat", "overfitting"]] = Field(default_factory=list)
    report: bool = True
    smoothing: int = 3
    preflight: bool = True
    early_loss_step: int = 10
    max_seq_length: int | None = None
    probe_gradients: bool = True

    @model_validator(mode="after")
    def _known_thresholds(self) -> TrainwatchOptions:
        try:
            build_rules(KINDS, **self.thresholds)
        except TypeError as error:  # pydantic reports a ValueError as a validation error of this key
            raise ValueError(str(error)) from None
        return self

    @property
    def thresholds(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def diagnoser(self) -> Diagnoser:
        return Diagnoser(
            self.stop_on,
            report=self.report,
            smoothing=self.smoothing,
            preflight=self.preflight,
            early_loss_step=self.early_loss_step,
            max_seq_length=self.max_seq_length,
            probe_gradients=self.probe_gradients,
            **self.thresholds,
        )


class TrainwatchArgs(BaseModel):
    """The plugin's part of Axolotl's config schema: one key, ``trainwatch``."""

    trainwatch: TrainwatchOptions = Field(default_factory=TrainwatchOptions)


class TrainwatchPlugin(BasePlugin):
    """Adds a Diagnoser, configured from the ``trainwatch`` key, to the Trainer Axolotl builds (SFT and RL alike)."""

    def get_input_args(self) -> str:
        return f"{__name__}.TrainwatchArgs"

    def add_callbacks_pre_trainer(self, cfg: Any, model: Any) -> list[Diagnoser]:
        """The Diagnoser goes in with the Trainer's own callbacks, so it sees ``on_train_begin`` (pre-flight)."""
        return [TrainwatchOptions.model_validate(cfg.get("trainwatch") or {}).diagnoser()]
