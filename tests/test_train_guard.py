"""The 4-bit CPU trap: bitsandbytes repacks Linear4bit weights for an inference-only kernel during evaluation.

On CPUs with AVX512-BF16, bitsandbytes sets ``support_avx512bf16_for_cpu`` on every Linear4bit; the first eval-mode,
no-grad forward (every evaluation) then repacks the weight in place, for good. The reference run clears the flag.
"""

from __future__ import annotations

import json

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.nn.modules import has_avx512bf16  # noqa: E402

from trainwatch import train  # noqa: E402


def four_bit_model(guard: bool):
    script, args = train.parse(["--use_cpu", "true", "--output_dir", "unused"])
    model = train.load_model(script, args)  # applies the guard
    if not guard:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on an AVX512-BF16 CPU
    return model


def packed_layers(model) -> int:
    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


@pytest.mark.parametrize("guard", [True, False])
def test_evaluation_repacks_4bit_weights_only_without_the_guard(guard):
    model = four_bit_model(guard)
    layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert packed_layers(model) == (0 if guard else layers)


@pytest.mark.skipif(not has_avx512bf16(), reason="the packed kernel's silent zero gradients need an AVX512-BF16 CPU")
def test_diagnoser_reports_zero_gradients_when_the_guard_is_off(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "keep_4bit_layers_trainable_on_cpu", lambda model: 0)
    out = tmp_path / "trap"
    train.main([
        "--use_cpu", "true", "--output_dir", str(out), "--max_examples", "96", "--max_eval_examples", "16",
        "--num_train_epochs", "6", "--logging_steps", "2", "--disable_tqdm", "true",
    ])
    report = json.loads((out / "trainwatch" / "diagnosis.json").read_text())
    assert (report["verdict"], report["diagnoses"][0]["cause"]) == ("flat", "zero_gradients")
