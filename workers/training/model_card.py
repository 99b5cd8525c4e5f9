"""The model card: the `README.md` a person reads to learn what a checkpoint is and how to load it."""

from __future__ import annotations

from typing import Any

from models.objectives import OBJECTIVES_BY_TYPE
from models.objectives.base import ObjectiveSpec

_SPECIAL_TOKENS = {
    "gpt2": "`<|endoftext|>` (end of text, also padding)",
    "bert": "`[PAD]` `[UNK]` `[CLS]` `[SEP]` `[MASK]`; `tokenizer(text)` adds `[CLS] … [SEP]`",
    "roberta": "`<s>` `<pad>` `</s>` `<unk>` `<mask>`; `tokenizer(text)` adds `<s> … </s>`",
    "t5": "`<pad>` `</s>` `<unk>` and 100 sentinels `<extra_id_0>` … `<extra_id_99>`; `tokenizer(text)` adds `</s>`",
}

_TOKENIZERS = {
    "char": "one token per character",
    "bpe": "byte-level BPE",
    "wordpiece": "WordPiece (cased)",
    "unigram": "Unigram (SentencePiece style)",
}


def objective_section(objective: dict[str, Any]) -> ObjectiveSpec:
    """The registered objective's spec section, from the `objective` of a stored spec."""
    return OBJECTIVES_BY_TYPE[objective["type"]].model_validate(objective)


def render_model_card(lineage: dict[str, Any]) -> str:
    """Markdown describing a checkpoint from its lineage record."""
    spec = lineage["job"]["spec"]
    model, training, tokenizer = spec["model"], spec["training"], spec["tokenizer"]
    objective = objective_section(spec["objective"])
    ckpt = lineage["checkpoint"]
    tok_desc = _TOKENIZERS.get(tokenizer["type"], tokenizer["type"]) + (
        f", vocabulary {tokenizer['vocab_size']:,}" if "vocab_size" in tokenizer else ""
    )
    specials = _SPECIAL_TOKENS.get(tokenizer.get("special_tokens") or "gpt2", "")
    data = lineage["dataset"]
    corpus_tokens = data.get("corpus_tokens") or {}
    corpora_rows = "\n".join(
        f"| {c['name']} | `{c['id']}` | `{c['sha256']}` | {c['documents']:,} | {_tokens(corpus_tokens.get(c['id']))} |"
        for c in lineage["corpora"]
    )
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(ckpt["metrics"].items()))
    curated = _curated_section(lineage["curated_dataset"]) if lineage.get("curated_dataset") else ""
    return f"""---
library_name: transformers
tags: [selfsup, {objective.type}, {model["family"]}]
---

# {lineage["job"]["name"]} — checkpoint v{ckpt["version"]}{" (final)" if ckpt["final"] else ""}

A `{model["family"]}` model pretrained {_origin(lineage.get("init_from"))} by selfsup, on unlabeled text
only, with {objective.describe()}.
{_continued_section(lineage["init_from"]) if lineage.get("init_from") else ""}
## Model
- Family `{model["family"]}`: {_shape(model)}.
- {lineage["parameters"]:,} parameters.
- Tokenizer: {tok_desc}, {_tokenizer_origin(lineage.get("init_from"))}. Special tokens: {specials}.

## Training
- {ckpt["step"]:,} of {training["max_steps"]:,} steps, {ckpt["tokens_seen"]:,} tokens seen
  ({_tokens_per_step(spec, objective)}).
- AdamW, learning rate {training["learning_rate"]} (warmup {training["warmup_steps"]} steps, cosine to
  {training["min_learning_rate"]}), weight decay {training["weight_decay"]}, betas {training["betas"]},
  gradient clip {training["grad_clip"]}, seed {training["seed"]}, precision {training["precision"]}.
- Job `{lineage["job"]["id"]}`; the full spec and lineage are in `selfsup.json`.

## Corpora
Tokens: {data["train_tokens"]:,} for training, {data["validation_tokens"]:,} for validation.

| name | id | sha256 | documents | tokens (train / validation) |
| --- | --- | --- | --- | --- |
{corpora_rows}
{curated}
## Metrics at this checkpoint
| metric | value |
| --- | --- |
{metric_rows}

## Load it
```python
{_snippet(objective)}
```
"""


def _snippet(objective: ObjectiveSpec) -> str:
    loader = objective.checkpoint_class
    imports = ", ".join(["AutoTokenizer", loader, *objective.usage_imports])
    lines = [
        f"from transformers import {imports}",
        "",
        'path = "path/to/this/folder"',
        "tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)",
        f"model = {loader}.from_pretrained(path, local_files_only=True)",
        *objective.usage_example(),
    ]
    return "\n".join(lines)


def _shape(model: dict[str, Any]) -> str:
    depth = f"{model['layers']} layers"
    if model["family"] == "t5":
        depth = f"{model['layers']} encoder and {model['layers']} decoder layers"
    return (
        f"{depth}, {model['heads']} heads, width {model['width']}, context length {model['context_length']}, "
        f"dropout {model['dropout']}"
    )


def _tokens_per_step(spec: dict[str, Any], objective: ObjectiveSpec) -> str:
    training, length = spec["training"], spec["model"]["context_length"]
    per_example = objective.describe_example(length)
    return f"batch {training['batch_size']} × {training['grad_accum_steps']} accumulation × {per_example}"


def _tokens(counts: dict[str, int] | None) -> str:
    if not counts:
        return "—"
    return f"{counts.get('train', 0):,} / {counts.get('validation', 0):,}"


def _curated_section(curated: dict[str, Any]) -> str:
    """The model card's account of a curated dataset: its mixture, its rules and what curation removed."""
    sources = "\n".join(
        f"| {s['name']} | `{s['corpus_id']}` | {s['weight']:g} | {s['share']:.3f} |" for s in curated["sources"]
    )
    against = ", ".join(f"`{c['corpus_id']}` ({c['name']})" for c in curated.get("decontaminate_against") or [])
    curation = curated.get("curation")
    if curation is None:  # a plain mixture: only decontamination runs, and only against named corpora
        rules = "`decontamination` only" if against else "none (a plain mixture)"
    else:
        rules = ", ".join(f"`{rule}`" for rule, section in curation.items() if (section or {}).get("enabled")) or "none"
    totals = curated.get("report_totals") or {}
    total_rows = "\n".join(f"| {k} | {_total(v)} |" for k, v in totals.items())
    return f"""
## Curated dataset
Dataset `{curated["id"]}` ({curated["name"]}): the corpora above, curated by selfsup, then mixed; training
batches draw each source in proportion to its share of the tokens.

| source | corpus | weight | share |
| --- | --- | --- | --- |
{sources}

- Curation rules on: {rules}.{f" Decontaminated against {against}." if against else ""} The full spec,
  with every threshold, is under `curated_dataset.curation` in `selfsup.json`.

| curation report total | value |
| --- | --- |
{total_rows}
"""


def _total(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_total(v)}" for k, v in value.items())
    return f"{value:,}" if isinstance(value, int) else str(value)


def _origin(init_from: dict[str, Any] | None) -> str:
    if not init_from:
        return "from random weights"
    return f"further (continued pretraining) from {_name_base(init_from)}"


def _tokenizer_origin(init_from: dict[str, Any] | None) -> str:
    if not init_from:
        return "trained on the training split of the corpora below"
    return f"kept from {_name_base(init_from)} (tokenizer files' sha256 `{init_from['tokenizer_sha256']}`)"


def _name_base(base: dict[str, Any]) -> str:
    if base["type"] == "checkpoint":
        return (
            f"checkpoint `{base['id']}` (v{base['version']}, step {base['step']:,} of job `{base['job_id']}`, "
            f"{base['job_name']})"
        )
    return f"model `{base['id']}`" + (f" ({base['name']})" if base.get("name") else "")


def _continued_section(init_from: dict[str, Any]) -> str:
    """The chain of bases back to the first, each with what it was trained on, and the parent's files."""
    chain, level = [], init_from
    while level:
        corpora = ", ".join(f"{c['name']} (`{c['id']}`, sha256 `{c['sha256']}`)" for c in level.get("corpora") or [])
        chain.append(f"- {_name_base(level)}" + (f", trained on {corpora}" if corpora else ""))
        level = level.get("init_from") or {}
    chain_lines = "\n".join(chain)
    files = "\n".join(f"| {f['name']} | `{f['sha256']}` |" for f in init_from["files"])
    return f"""
## Continued from
Training started from the weights, shape and tokenizer of {_name_base(init_from)}, with a fresh optimizer
and schedule from step 0. Its lineage, newest first (the full record is under `init_from` in `selfsup.json`):

{chain_lines}

Files of {_name_base(init_from)}:

| file | sha256 |
| --- | --- |
{files}
"""
