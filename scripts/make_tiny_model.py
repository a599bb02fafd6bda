"""Make the reference run's shipped assets: a tiny pretrained causal LM, its tokenizer and an instruction dataset.

QLoRA adapts a base that already knows its domain; a randomly initialised model would show a curve, but not the
one QLoRA users see. So this script makes a small "world" of four word/number skills, pretrains a tiny Llama on
that world's plain text (``upper(cat) = CAT``), and writes an instruction dataset about the same skills in a
template the base has never seen (``### Instruction: ... ### Response: ...`` with an EOS). Fine-tuning must then
teach the template and when to stop, which is what instruction tuning does at full scale.

Everything is seeded and offline; it takes about a minute on a GPU, 15-20 on a laptop CPU (the shipped model was
made on an H100). The result goes into ``trainwatch/assets/``::

    python scripts/make_tiny_model.py            # rewrites trainwatch/assets/
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ASSETS = Path(__file__).resolve().parents[1] / "trainwatch" / "assets"
EOS, PAD = "<|endoftext|>", "<|pad|>"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHARACTERS = ALPHABET + ALPHABET.upper() + "0123456789" + " \n\t.,:;!?'\"()[]{}<>=+-*/#_@%&|~^$`\\"


def make_word(rng: random.Random) -> str:
    """A pronounceable 3–6 letter pseudo-word (consonant/vowel pairs), so the skills act on realistic strings."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(3))
    return word[: rng.randint(3, 6)]


# skill: (instruction, the ways plain text states the same fact, answer)
SKILLS = {
    "upper": (
        "Write the word {w} in capital letters.",
        ("upper({w}) = {a}", "The word {w} in capital letters is {a}.", "{w} in capitals: {a}"),
        lambda w: w.upper(),
    ),
    "reverse": (
        "Reverse the word {w}.",
        ("reverse({w}) = {a}", "The word {w} reversed is {a}.", "{w} backwards: {a}"),
        lambda w: w[::-1],
    ),
    "spell": (
        "Spell the word {w} letter by letter.",
        ("spell({w}) = {a}", "The word {w} spelled letter by letter is {a}.", "{w} letter by letter: {a}"),
        lambda w: "-".join(w),
    ),
}
SUMS = ("What is {x} plus {y}?", ("{x} + {y} = {a}", "{x} plus {y} is {a}.", "The sum of {x} and {y} is {a}."))


def sample(rng: random.Random) -> tuple[str, str, str]:
    """One (instruction, plain text, answer) triple: a word skill, or adding two numbers below 50.

    The plain text states the fact in one of several phrasings, as a pretraining corpus would; the instruction
    asks for it in the fine-tuning template, which the base never sees.
    """
    if rng.random() < 0.25:
        x, y = rng.randint(0, 49), rng.randint(0, 49)
        instruction, phrasings = SUMS
        return instruction.format(x=x, y=y), rng.choice(phrasings).format(x=x, y=y, a=x + y), str(x + y)
    instruction, phrasings, answer = SKILLS[rng.choice(sorted(SKILLS))]
    word = make_word(rng)
    result = answer(word)
    return instruction.format(w=word), rng.choice(phrasings).format(w=word, a=result), result


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character, so a tiny model can learn character skills."""
    vocab = {PAD: 0, EOS: 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(CHARACTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, unk_token="<unk>", model_max_length=256
    )


def pretraining_batches(tokenizer: PreTrainedTokenizerFast, rng: random.Random, batch: int, length: int):
    """Endless batches of plain-text documents (a few facts each, EOS-separated), packed into fixed-length rows."""
    buffer: list[int] = []
    while True:
        while len(buffer) < batch * length:
            document = "\n".join(sample(rng)[1] for _ in range(rng.randint(1, 6)))
            buffer.extend(tokenizer(document)["input_ids"] + [tokenizer.eos_token_id])
        rows, buffer = buffer[: batch * length], buffer[batch * length :]
        yield torch.tensor(rows).view(batch, length)


def pretrain(tokenizer: PreTrainedTokenizerFast, steps: int, seed: int, device: str) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batches = pretraining_batches(tokenizer, random.Random(seed), batch=32, length=128)
    start = time.time()
    for step in range(1, steps + 1):
        lr = 3e-3 * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids = next(batches).to(device)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps:
            print(f"pretrain step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    return model.cpu()


def write_dataset(path: Path, size: int, rng: random.Random) -> None:
    with path.open("w") as f:
        for _ in range(size):
            instruction, _, answer = sample(rng)
            f.write(json.dumps({"instruction": instruction, "response": answer}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="pretraining steps (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    tokenizer = make_tokenizer()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = pretrain(tokenizer, args.steps, args.seed, device)
    model_dir = args.out / "tiny-llama"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(args.seed + 1)
    write_dataset(args.out / "instructions-train.jsonl", 800, rng)
    write_dataset(args.out / "instructions-eval.jsonl", 160, rng)
    print(f"wrote {model_dir} and the instruction dataset to {args.out}")


if __name__ == "__main__":
    main()
