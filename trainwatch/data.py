"""Instruction data for the reference run: JSONL in, masked token ids out.

Two record shapes are read, one JSON object per line:

- ``{"instruction": "...", "response": "..."}`` (an optional ``"input"`` is appended to the instruction);
- ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``: the last
  assistant message is the response, everything before it is the prompt.

Only the response and its EOS are learned: prompt tokens get the label -100. Labels are built before padding, and
the collator pads labels with -100, so a pad token that equals EOS (most hub tokenizers) never masks the real EOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
"""The Alpaca-style template, used where the tokenizer brings no chat template of its own."""


class DataError(ValueError):
    """A data file that cannot be trained on; the message is one line that names the file and the line."""


@dataclass(frozen=True)
class Example:
    """One prompt/response pair; ``messages`` is kept where the record was a chat, for the tokenizer's template."""

    prompt: str
    response: str
    messages: tuple[dict[str, str], ...] | None = None


def _example(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if (
            not isinstance(messages, list)
            or len(messages) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages)
        ):
            raise DataError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's (the response to learn)")
        turns = tuple({"role": str(m["role"]), "content": m["content"]} for m in messages)
        prompt = "\n\n".join(m["content"] for m in turns[:-1])
        return Example(PROMPT_TEMPLATE.format(instruction=prompt), turns[-1]["content"], turns)
    instruction, response = record.get("instruction"), record.get("response")
    if not isinstance(instruction, str) or not isinstance(response, str):
        raise DataError(f"{where}: needs string fields 'instruction' and 'response' (or a 'messages' list)")
    context = record.get("input")
    if isinstance(context, str) and context:
        instruction = f"{instruction}\n\n{context}"
    return Example(PROMPT_TEMPLATE.format(instruction=instruction), response)


def load_examples(path: str | Path) -> list[Example]:
    """All examples of a JSONL file; any unreadable line is a :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    examples = []
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: not valid JSON ({error.msg})") from None
                examples.append(_example(record, where))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


@dataclass
class Encoded:
    """Token ids and labels of one example, and whether the max length cut into its response."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode(example: Example, tokenizer: Any, max_length: int, *, mask_response: bool = False) -> Encoded:
    """Prompt masked with -100, response and EOS learned, cut to ``max_length``.

    ``mask_response`` masks the response too: the classic masking bug, kept so the run can reproduce it.
    """
    if example.messages is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(example.messages[:-1]), add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        prompt = tokenizer(example.prompt)["input_ids"]
    response = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt + response)[:max_length]
    labels = [IGNORE_INDEX] * len(prompt) + ([IGNORE_INDEX] * len(response) if mask_response else response)
    return Encoded(input_ids, labels[:max_length], truncated=len(prompt) + len(response) > max_length)


class InstructionDataset(Dataset):
    """Encoded examples; those whose response the max length cut off are counted, and dropped when nothing of the
    response is left (they would only teach the model to continue a prompt)."""

    def __init__(self, examples: list[Example], tokenizer: Any, max_length: int, *, mask_response: bool = False) -> None:
        encoded = [encode(e, tokenizer, max_length, mask_response=mask_response) for e in examples]
        self.truncated = sum(e.truncated for e in encoded)
        kept = [e for e in encoded if mask_response or any(label != IGNORE_INDEX for label in e.labels)]
        self.dropped = len(encoded) - len(kept)
        self.items = [{"input_ids": e.input_ids, "labels": e.labels} for e in kept]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]
