"""The live Diagnoser on real Trainer runs of tiny causal LMs: verdict, cause, stopping, reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainwatch import Diagnoser, ExplodingLossDetector, FlatLossDetector, OverfittingDetector
from trainwatch.findings import KINDS, logged_cause
from trainwatch.testing import SCENARIOS, tiny_trainer

FAILING = [name for name, s in SCENARIOS.items() if s.expected[0] != "healthy"]


def matches(diagnoser: Diagnoser, expected: tuple[str, str | None]) -> bool:
    """The scenario's (kind, cause) as its logs show it: the cause the model names (lora_alpha_zero, read by the
    pre-flight) counts as the one its logs give (zero_gradients); tests/test_gradients.py checks those."""
    kind, cause = expected
    first = logged_cause(diagnoser.diagnoses[0].cause) if diagnoser.diagnoses else None
    return diagnoser.verdict == kind and (cause is None or first == cause)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """Each scenario trained to the end once, watched by the Diagnoser and by each single-concern detector."""
    runs = {}
    for name in SCENARIOS:
        callbacks = [Diagnoser(), ExplodingLossDetector(), FlatLossDetector(), OverfittingDetector()]
        trainer = tiny_trainer(name, str(tmp_path_factory.mktemp(name)), callbacks=callbacks)
        trainer.train()
        runs[name] = (trainer, callbacks)
    return runs


@pytest.mark.parametrize("name", SCENARIOS)
def test_verdict_and_cause(watched, name) -> None:
    trainer, (diagnoser, *_) = watched[name]
    assert matches(diagnoser, SCENARIOS[name].expected), [(f.kind, f.cause, f.step) for f in diagnoser.diagnoses]
    assert trainer.state.global_step == trainer.state.max_steps  # without stop_on, nothing is stopped


@pytest.mark.parametrize("name", SCENARIOS)
def test_single_concern_detectors_find_what_the_diagnoser_finds(watched, name) -> None:
    _, (diagnoser, *detectors) = watched[name]
    for detector in detectors:
        (kind,) = detector.kinds
        assert detector.diagnoses == [f for f in diagnoser.diagnoses if f.kind == kind]


@pytest.mark.parametrize("name", FAILING)
def test_findings_carry_evidence_and_concrete_fixes(watched, name) -> None:
    trainer, (diagnoser, *_) = watched[name]
    finding = diagnoser.diagnoses[0]
    from_data = finding.evidence.get("decided_by") == "pre-flight"  # before the first step, from the train set
    assert (finding.step >= 1 or from_data) and finding.summary and finding.evidence and len(finding.fixes) >= 2
    if finding.cause in ("lr_too_high", "lr_too_low", "non_finite"):
        lr = trainer.args.learning_rate
        assert f"learning_rate {lr:g} → " in finding.fixes[0]
    report = json.loads((Path(trainer.args.output_dir) / "trainwatch" / "diagnosis.json").read_text())
    assert report["verdict"] == diagnoser.verdict
    assert [d["cause"] for d in report["diagnoses"]] == [f.cause for f in diagnoser.diagnoses]
    kind = diagnoser.verdict
    single = json.loads((Path(trainer.args.output_dir) / "trainwatch" / f"diagnosis-{kind}.json").read_text())
    assert single["diagnoses"] == [d for d in report["diagnoses"] if d["kind"] == kind]


@pytest.mark.parametrize("name", SCENARIOS)
def test_stop_on_stops_failures_early_and_never_healthy_runs(tmp_path, name) -> None:
    diagnoser = Diagnoser(stop_on=KINDS)
    trainer = tiny_trainer(name, str(tmp_path), callbacks=[diagnoser], report_to=[])
    trainer.train()
    assert matches(diagnoser, SCENARIOS[name].expected)
    if SCENARIOS[name].expected[0] == "healthy":
        assert trainer.state.global_step == trainer.state.max_steps
    else:
        # stopped on the step it decided; a pre-flight decision (step 0) takes effect after Trainer's first step
        assert trainer.state.global_step == max(diagnoser.diagnoses[0].step, 1)
        assert trainer.state.global_step <= trainer.state.max_steps * 0.6


def test_all_masked_labels_with_eval_is_flat_not_overfitting_nor_exploding(tmp_path) -> None:
    """With the default NaN filter the masked run logs 0.0; without it, NaN. Neither is overfitting or exploding."""
    for nan_filter in (True, False):
        diagnoser = Diagnoser()
        tiny_trainer(
            "no_target_tokens", str(tmp_path / str(nan_filter)), callbacks=[diagnoser], report_to=[],
            eval_steps=10, eval_strategy="steps", logging_nan_inf_filter=nan_filter, max_steps=60,
        ).train()
        assert [(f.kind, f.cause) for f in diagnoser.diagnoses] == [("flat", "no_target_tokens")]


def test_stopping_an_explosion_names_the_last_good_checkpoint_and_deletes_none(tmp_path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=["exploding"])
    trainer = tiny_trainer(
        "non_finite", str(tmp_path), callbacks=[diagnoser], report_to=[], save_strategy="steps", save_steps=5, seed=1
    )
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    finding = diagnoser.diagnoses[0]
    onset = finding.evidence["onset_step"]
    saved = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert saved == list(range(5, trainer.state.global_step + 1, 5))  # every checkpoint is still there
    good = max(s for s in saved if s < onset)  # one saved at the onset already holds the NaN update
    report = json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())
    assert report["checkpoints_to_keep"]["exploding"].endswith(f"checkpoint-{good}")
    assert report["stopped_by"]["cause"] == "non_finite"
    assert f"checkpoint-{good}" in caplog.text and "stopping training" in caplog.text


def test_report_is_printed_once_and_added_to_tensorboard(tmp_path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=["flat"])
    trainer = tiny_trainer("lr_too_low", str(tmp_path), callbacks=[diagnoser])
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records if r.name == "trainwatch"]
    assert sum("FLAT (lr_too_low)" in m for m in messages) == 1
    assert sum("verdict flat" in m for m in messages) == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    assert "trainwatch/diagnosis/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("trainwatch/diagnosis/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "verdict: flat" in text and "lr_too_low" in text


def test_report_false_writes_nothing(tmp_path) -> None:
    diagnoser = Diagnoser(report=False)
    tiny_trainer("exploding", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=10).train()
    assert diagnoser.verdict == "exploding"
    assert not (tmp_path / "trainwatch").exists()


def test_bad_arguments_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="stop_on"):
        Diagnoser(stop_on=["exploded"])
    with pytest.raises(ValueError, match="does not watch"):
        ExplodingLossDetector(stop_on=["flat"])
    with pytest.raises(TypeError, match="unknown threshold"):
        FlatLossDetector(max_loss=10)
