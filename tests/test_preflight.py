"""The pre-flight checklist: pure checks on real collators and arguments, and the live Diagnoser on real runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.data.data_collator import default_data_collator

from trainwatch import preflight as pf
from trainwatch.callbacks import Diagnoser
from trainwatch.engine import Engine
from trainwatch.testing import Progressions, tiny_trainer


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **overrides)


class PaddedResponses(torch.utils.data.Dataset):
    """Prompt/response pairs of different lengths; ``keep`` response tokens survive a window of ``window``."""

    def __init__(self, prompt_lengths: list[int], response_length: int, window: int, eos: int = 2) -> None:
        self.rows = []
        for prompt in prompt_lengths:
            ids = [5] * prompt + [7] * (response_length - 1) + [eos]
            labels = [-100] * prompt + ids[prompt:]
            self.rows.append((ids[:window], labels[:window]))
        self.window = window

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, labels = self.rows[i]
        pad = self.window - len(ids)
        return {"input_ids": ids + [0] * pad, "labels": labels + [-100] * pad, "attention_mask": [1] * len(ids) + [0] * pad}


def test_counts_targets_after_the_causal_shift() -> None:
    # One example whose only target is its first label: the shifted loss never sees it.
    rows = [{"input_ids": [1, 2, 3], "labels": [1, -100, -100]}, {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    count = pf.count_targets(rows, default_data_collator)
    assert (count.inspected, count.without_targets, count.with_targets) == (2, 1, 1)


def test_no_target_at_all_fails_and_few_examples_warn() -> None:
    masked = pf.count_targets(Progressions(40, masked_fraction=1.0), default_data_collator)
    [check] = pf.check_targets(masked)
    assert check.status == pf.FAIL and "-100" in check.detail and check.fix

    few = {c.name: c for c in pf.check_targets(pf.count_targets(Progressions(40), default_data_collator))}
    assert few["examples with targets"].status == pf.WARN and "40" in few["examples with targets"].detail
    enough = {c.name: c for c in pf.check_targets(pf.count_targets(Progressions(300), default_data_collator))}
    assert enough["examples with targets"].status == pf.PASS
    assert enough["examples without targets"].status == pf.PASS


def test_large_sets_are_sampled_and_extrapolated() -> None:
    count = pf.count_targets(Progressions(5000), default_data_collator, sample_size=100)
    assert count.inspected == 100 and count.dataset_size == 5000 and count.estimated_with_targets == 5000
    [passed, _] = pf.check_targets(count)
    assert passed.status == pf.PASS and passed.detail.startswith("≈")


def test_truncated_responses_are_counted() -> None:
    # Window 16, response 6 tokens: prompts of 4 fit, of 12 are cut short, of 16 lose the whole response.
    data = PaddedResponses([4] * 6 + [12] * 3 + [16] * 2, response_length=6, window=16)
    count = pf.count_targets(data, default_data_collator, max_length=16, eos_token_id=2)
    assert (count.without_targets, count.at_max_length, count.cut_responses) == (2, 5, 5)
    check = pf.check_truncation(count, 16)
    assert check.status == pf.WARN and check.detail.startswith("5 of 11") and "16" in check.fix
    statuses = {c.name: c.status for c in pf.check_targets(count)}
    assert statuses["examples without targets"] == pf.WARN

    fits = pf.count_targets(PaddedResponses([4] * 5, 6, window=16), default_data_collator, max_length=16, eos_token_id=2)
    assert pf.check_truncation(fits, 16).status == pf.PASS
    assert pf.check_truncation(fits, None).status == pf.SKIP


def test_argument_checks(tmp_path: Path) -> None:
    plain = _args(tmp_path)
    assert pf.check_precision(plain, cuda=False, bf16_supported=False).status == pf.SKIP
    assert pf.check_precision(plain, cuda=True, bf16_supported=True).status == pf.WARN
    assert pf.check_precision(plain, cuda=True, bf16_supported=False).fix.startswith("fp16=True")

    assert pf.check_gradient_checkpointing(plain, 7_000_000_000).status == pf.WARN
    assert pf.check_gradient_checkpointing(_args(tmp_path, activation_checkpointing=True), 7_000_000_000).status == pf.PASS
    assert pf.check_gradient_checkpointing(plain, 30_000).status == pf.PASS

    assert pf.check_warmup(30, 1000).status == pf.PASS
    none = pf.check_warmup(0, 1000)
    assert none.status == pf.WARN and "30 steps" in none.fix
    assert pf.check_warmup(500, 1000).status == pf.WARN

    assert pf.check_grad_clipping(_args(tmp_path, max_grad_norm=0.0), quantized=False).status == pf.WARN
    assert pf.check_grad_clipping(plain, quantized=False).status == pf.PASS
    qlora = pf.check_grad_clipping(plain, quantized=True)
    assert qlora.status == pf.WARN and "0.3" in qlora.fix
    assert pf.check_grad_clipping(_args(tmp_path, max_grad_norm=0.3), quantized=True).status == pf.PASS

    assert pf.check_evaluation(plain, 100).status == pf.WARN
    assert pf.check_evaluation(_args(tmp_path, eval_strategy="epoch"), 100).status == pf.WARN
    assert pf.check_evaluation(_args(tmp_path, eval_strategy="steps", eval_steps=25), 100).status == pf.PASS
    assert pf.check_evaluation(_args(tmp_path, eval_strategy="steps", eval_steps=50), 100).status == pf.WARN

    assert pf.check_save_limit(plain).status == pf.WARN
    assert pf.check_save_limit(_args(tmp_path, save_total_limit=2)).status == pf.PASS
    assert pf.check_save_limit(_args(tmp_path, save_strategy="no")).status == pf.SKIP

    assert pf.check_memory(None, None).status == pf.SKIP
    assert pf.check_memory(70 * 2**30, 80 * 2**30).status == pf.PASS
    assert pf.check_memory(75 * 2**30, 80 * 2**30).status == pf.WARN
    assert pf.check_early_loss(4.0, 1, 3.5, 10).detail == "4 at step 1 → 3.5 at step 10"
    assert pf.check_early_loss(4.0, 1, 4.1, 10).status == pf.WARN
    assert pf.check_early_loss(4.0, 1, float("nan"), 10).status == pf.FAIL
    assert pf.effective_batch_size(_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=8)) == 32


def test_learning_rate_check(tmp_path: Path) -> None:
    # The lesson's rates pass, and so does anything within 10x of them; further out warns with the usual rate.
    inside = ((2e-4, True), (1e-4, True), (3e-3, True), (1e-5, True), (2e-5, False), (2e-4, False), (2e-6, False))
    for rate, lora in inside:
        check = pf.check_learning_rate(_args(tmp_path, learning_rate=rate), lora=lora)
        assert check.status == pf.PASS and check.name == "learning rate" and not check.fix, (rate, lora, check)
    high = pf.check_learning_rate(_args(tmp_path, learning_rate=1.0), lora=True)
    assert high.status == pf.WARN and "blow up" in high.detail and high.fix.startswith("learning_rate 1 → 0.0002")
    full = pf.check_learning_rate(_args(tmp_path, learning_rate=3e-3), lora=False)
    assert full.status == pf.WARN and "full fine-tuning" in full.detail
    assert full.fix.startswith("learning_rate 0.003 → 2e-05")
    low = pf.check_learning_rate(_args(tmp_path, learning_rate=5e-6), lora=True)
    assert low.status == pf.WARN and "hardly move" in low.detail and "→ 0.0002" in low.fix
    assert pf.check_learning_rate(_args(tmp_path, learning_rate=0.0), lora=False).status == pf.WARN
    # the thresholds are arguments: a stricter band warns sooner
    assert pf.check_learning_rate(_args(tmp_path, learning_rate=1e-3), lora=True, factor=3).status == pf.WARN
    assert pf.check_learning_rate(object(), lora=True).status == pf.SKIP


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())


def test_no_target_tokens_stops_before_the_run_spends_its_budget(tmp_path: Path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=("flat",))
    trainer = tiny_trainer("no_target_tokens", str(tmp_path), callbacks=[diagnoser])
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    # Trainer checks should_training_stop only after an optimizer step: one step of 150 runs.
    assert trainer.state.global_step == 1
    [finding] = diagnoser.diagnoses
    assert (finding.kind, finding.cause, finding.step) == ("flat", "no_target_tokens", 0)
    report = _report(tmp_path)
    assert report["verdict"] == "flat" and report["stopped_by"]["cause"] == "no_target_tokens"
    checks = {c["name"]: c for c in report["preflight"]["checks"]}
    assert checks["target tokens"]["status"] == "fail"
    assert report["preflight"]["effective_batch_size"] == 8 and report["preflight"]["expected_total_steps"] == 150
    assert "[fail] target tokens" in caplog.text and "expected total steps 150" in caplog.text


def test_no_target_tokens_without_stop_on_is_reported_and_training_goes_on(tmp_path: Path) -> None:
    diagnoser = Diagnoser()
    trainer = tiny_trainer("no_target_tokens", str(tmp_path), callbacks=[diagnoser], max_steps=12)
    trainer.train()
    assert trainer.state.global_step == 12
    # Decided from the data before the first step; the logs alone show it after confirm_steps, with the same cause.
    assert [(f.kind, f.cause, f.step) for f in diagnoser.diagnoses] == [("flat", "no_target_tokens", 0)]
    assert {c.name: c.status for c in diagnoser.checks}["target tokens"] == pf.FAIL
    replayed = Engine(facts=diagnoser.engine.history.facts).replay(
        (e["step"], e) for e in trainer.state.log_history if "step" in e
    )
    assert [(f.kind, f.cause, f.step) for f in replayed.findings] == [("flat", "no_target_tokens", 5)]


def test_healthy_run_checklist_in_report(tmp_path: Path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=("flat", "exploding"))
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], max_steps=15, warmup_steps=0.03,
                           save_strategy="steps", save_steps=10, save_total_limit=2)
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    assert trainer.state.global_step == 15 and diagnoser.verdict == "healthy"
    statuses = {c["name"]: c["status"] for c in _report(tmp_path)["preflight"]["checks"]}
    assert statuses == {
        "examples with targets": "pass", "examples without targets": "pass", "max sequence length": "skip",
        "trainable parameters": "pass",
        "mixed precision": "skip", "gradient checkpointing": "pass", "warmup": "pass", "gradient clipping": "pass",
        "learning rate": "warn",  # 3e-3 trains the tiny model from scratch; for full fine-tuning it is far too high
        "evaluation": "warn", "save_total_limit": "pass", "GPU memory at step 1": "skip", "loss down by step 10": "pass",
        "first loss vs a uniform guess": "pass",
    }
    assert "[pass] loss down by step 10" in caplog.text


def test_flat_start_is_reported_at_step_10(tmp_path: Path) -> None:
    diagnoser = Diagnoser()
    tiny_trainer("lr_too_low", str(tmp_path), callbacks=[diagnoser], max_steps=12).train()
    [early] = [c for c in diagnoser.checks if c.name == pf.EARLY_LOSS]
    assert early.status == pf.WARN and early.detail.startswith("4.159 at step 1, ") and "at step 10" in early.detail
    [rate] = [c for c in diagnoser.checks if c.name == "learning rate"]
    assert rate.status == pf.WARN and rate.fix.startswith("learning_rate 1e-07 → 2e-05")


def test_early_loss_waits_for_a_second_log(tmp_path: Path) -> None:
    """With logging_steps=10 the first loss is logged at step 10: it is compared with the next one, not itself."""
    diagnoser = Diagnoser()
    tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], max_steps=20, logging_steps=10, report_to=[]).train()
    [early] = [c for c in diagnoser.checks if c.name == pf.EARLY_LOSS]
    assert early.status == pf.PASS and " at step 10 → " in early.detail and early.detail.endswith("at step 20")


def test_preflight_leaves_the_run_unchanged(tmp_path: Path) -> None:
    """Inspecting the data must not consume the sampler or any random state: same losses with and without it."""
    losses = []
    for on in (False, True):
        trainer = tiny_trainer("healthy_noisy", str(tmp_path / str(on)), callbacks=[Diagnoser(preflight=on)],
                               max_steps=8, report_to=[])
        trainer.train()
        losses.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert losses[0] == losses[1]


def test_preflight_off_and_uninspectable_data(tmp_path: Path) -> None:
    off = Diagnoser(preflight=False)
    tiny_trainer("healthy", str(tmp_path / "off"), callbacks=[off], max_steps=3).train()
    assert off.checks == [] and "preflight" not in _report(tmp_path / "off")

    class Streamed(torch.utils.data.IterableDataset):
        """A streaming dataset: it has no length and no index, so it cannot be inspected without consuming it."""

        def __iter__(self):
            yield from (Progressions(64)[i] for i in range(64))

    diagnoser = Diagnoser()
    trainer = tiny_trainer("healthy", str(tmp_path / "streamed"), callbacks=[diagnoser], max_steps=3)
    trainer.train_dataset = Streamed()
    trainer.train()
    assert trainer.state.global_step == 3 and not diagnoser.disabled
    [skip] = [c for c in diagnoser.checks if c.name == "target tokens"]
    assert skip.status == pf.SKIP and "cannot be inspected" in skip.detail


ASSETS = Path(__file__).resolve().parents[1] / "trainwatch" / "assets"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainwatch", "check", *args], capture_output=True, text=True, timeout=300)


def test_check_command_on_the_shipped_data() -> None:
    data, model = str(ASSETS / "instructions-train.jsonl"), str(ASSETS / "tiny-llama")
    ok = _check(data, "--model", model)
    assert ok.returncode == 0, ok.stderr
    assert "[pass] examples with targets: 800 examples" in ok.stdout and "[pass] max sequence length" in ok.stdout

    # A window too short for any response: every example is cut, none keeps a target token.
    short = _check(data, "--model", model, "--max-seq-length", "24")
    assert short.returncode == 1
    assert "[fail] target tokens" in short.stdout and "800 of 800 inspected examples fill all 24 tokens" in short.stdout


def test_check_command_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = _check(str(tmp_path / "nothing.jsonl"), "--model", str(ASSETS / "tiny-llama"))
    no_model = _check(str(ASSETS / "instructions-train.jsonl"), "--model", str(tmp_path / "no-model"))
    for result in (missing, no_model):
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("trainwatch: error: ") and result.stderr.count("\n") == 1


def test_live_truncation_count_with_the_pipelines_max_length(tmp_path: Path) -> None:
    diagnoser = Diagnoser(max_seq_length=16)
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], max_steps=2, report_to=[])
    trainer.train_dataset = PaddedResponses([4] * 6 + [12] * 3 + [16] * 2, response_length=6, window=16)
    trainer.train()
    checks = {c.name: c for c in diagnoser.checks}
    # The EOS that marks a whole response comes from the model's config (Llama: 2), as no tokenizer was given.
    assert checks["max sequence length"].status == pf.WARN and checks["max sequence length"].detail.startswith("5 of 11")
    assert checks["examples without targets"].status == pf.WARN


def test_a_nan_hidden_as_zero_is_not_progress(tmp_path: Path) -> None:
    """Trainer's logging_nan_inf_filter logs a window of NaN steps as 0.0 beside a NaN grad norm: not a loss drop."""
    diagnoser = Diagnoser()
    trainer = tiny_trainer("non_finite", str(tmp_path), callbacks=[diagnoser], max_steps=12, report_to=[])
    trainer.train()
    logged = {e["step"]: (e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e}
    assert logged[1][0] > 0 and logged[10][0] == 0.0 and logged[10][1] != logged[10][1]  # 0.0 beside a NaN, for real
    [early] = [c for c in diagnoser.checks if c.name == pf.EARLY_LOSS]
    assert early.status == pf.FAIL and "NaN, logged as 0.0 by logging_nan_inf_filter" in early.detail
    statuses = {c["name"]: c["status"] for c in _report(tmp_path)["preflight"]["checks"]}
    assert statuses[pf.EARLY_LOSS] == "fail"


def test_early_loss_reads_a_zero_by_what_is_logged_beside_it() -> None:
    nan, inf = float("nan"), float("inf")
    assert pf.check_early_loss(4.0, 1, 0.0, 10, last=0.0, grad_norm=nan).status == pf.FAIL
    assert pf.check_early_loss(4.0, 1, 3.9, 10, last=0.0, grad_norm=inf).status == pf.FAIL  # the level lags the NaN
    assert pf.check_early_loss(4.0, 1, 0.0, 10, last=0.0, grad_norm=0.5).status == pf.PASS  # a real 0.0 (GRPO-like)
    assert pf.check_early_loss(4.0, 1, 0.0, 10).status == pf.PASS  # no grad norm known: taken as logged
    # Never a positive loss is the all-masked signature (flat), not a hidden NaN: "not lower", as before.
    assert pf.check_early_loss(0.0, 1, 0.0, 10, last=0.0, grad_norm=nan).status == pf.WARN


def test_first_loss_far_above_a_uniform_guess_before_any_update_is_named() -> None:
    ln64 = 4.1589
    assert pf.check_first_loss(4.2, 1, ln64).status == pf.PASS
    scaled = pf.check_first_loss(4 * 4.2, 1, ln64, accumulation=4)
    assert scaled.status == pf.WARN and "gradient_accumulation_steps = 4" in scaled.detail
    summed = pf.check_first_loss(23 * 4.2, 1, ln64)
    assert summed.status == pf.WARN and "summed" in summed.detail
    assert pf.check_first_loss(45.9, 5, ln64).status == pf.FAIL  # after updates: an explosion, the rules decide it
    assert pf.check_first_loss(45.9, 1, None).status == pf.SKIP


def test_a_loss_scaled_by_the_accumulation_factor_is_named_in_a_real_run(tmp_path: Path) -> None:
    """The classic accumulation bug: a custom loss that returns a per-batch mean, ignoring num_items_in_batch, while
    Trainer sums the micro-batches' losses for it to divide: the logged loss is 4 × the true one, 4 × ln V before
    any update. It learns, so no rule calls it a failure; the checklist names the scaling."""
    from trainwatch.testing import token_mean_loss

    diagnoser = Diagnoser()
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], max_steps=12, report_to=[],
                           gradient_accumulation_steps=4, per_device_train_batch_size=2)
    trainer.compute_loss_func = token_mean_loss  # a per-batch mean: what a hand-written loss usually returns
    trainer.train()
    [first] = [c for c in diagnoser.checks if c.name == "first loss vs a uniform guess"]
    assert first.status == pf.WARN and "gradient_accumulation_steps = 4" in first.detail
    assert diagnoser.verdict == "healthy"
