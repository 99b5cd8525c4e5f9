"""The model card: the `README.md` a person reads to learn what a checkpoint is and how to load it."""

from __future__ import annotations

from typing import Any

_LOADERS = {"causal_lm": "AutoModelForCausalLM"}


def render_model_card(lineage: dict[str, Any]) -> str:
    """Markdown describing a checkpoint from its lineage record."""
    spec = lineage["job"]["spec"]
    model, training, tokenizer = spec["model"], spec["training"], spec["tokenizer"]
    objective = spec["objective"]
    ckpt = lineage["checkpoint"]
    loader = _LOADERS.get(objective["type"], "AutoModel")
    params = ", ".join(f"{k}={v}" for k, v in objective.items() if k != "type") or "defaults"
    tok_desc = tokenizer["type"] + (f", vocabulary {tokenizer['vocab_size']}" if "vocab_size" in tokenizer else "")
    corpora_rows = "\n".join(
        f"| {c['name']} | `{c['id']}` | `{c['sha256']}` | {c['documents']} |" for c in lineage["corpora"]
    )
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(ckpt["metrics"].items()))
    data = lineage["dataset"]
    return f"""---
library_name: transformers
tags: [selfsup, {objective["type"]}, {model["family"]}]
---

# {lineage["job"]["name"]} — checkpoint v{ckpt["version"]}{" (final)" if ckpt["final"] else ""}

A `{model["family"]}` model pretrained from random weights by selfsup with the **{objective["type"]}**
objective ({params}), on unlabeled text only.

## Model
- Family `{model["family"]}`: {model["layers"]} layers, {model["heads"]} heads, width {model["width"]},
  context length {model["context_length"]}, dropout {model["dropout"]}.
- {lineage["parameters"]:,} parameters.
- Tokenizer: {tok_desc}, trained on the training split of the corpora below.

## Training
- {ckpt["step"]:,} of {training["max_steps"]:,} steps, {ckpt["tokens_seen"]:,} tokens seen
  (batch {training["batch_size"]} × {training["grad_accum_steps"]} accumulation × {model["context_length"]} tokens).
- AdamW, learning rate {training["learning_rate"]} (warmup {training["warmup_steps"]} steps, cosine to
  {training["min_learning_rate"]}), weight decay {training["weight_decay"]}, betas {training["betas"]},
  gradient clip {training["grad_clip"]}, seed {training["seed"]}, precision {training["precision"]}.
- Job `{lineage["job"]["id"]}`; the full spec and lineage are in `selfsup.json`.

## Corpora
Tokens: {data["train_tokens"]:,} for training, {data["validation_tokens"]:,} for validation.

| name | id | sha256 | documents |
| --- | --- | --- | --- |
{corpora_rows}

## Metrics at this checkpoint
| metric | value |
| --- | --- |
{metric_rows}

## Load it
```python
from transformers import AutoTokenizer, {loader}

tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder", local_files_only=True)
model = {loader}.from_pretrained("path/to/this/folder", local_files_only=True)
```
"""
