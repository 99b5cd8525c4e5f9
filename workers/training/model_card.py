"""The model card: the `README.md` a person reads to learn what a checkpoint is and how to load it."""

from __future__ import annotations

from typing import Any

# The stock class a fine-tuning script loads each objective's checkpoint with.
_LOADERS = {
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "span_corruption": "AutoModelForSeq2SeqLM",
    "contrastive": "AutoModel",
}

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


def describe_objective(objective: dict[str, Any]) -> str:
    """The objective and its parameters, in a sentence or two."""
    kind = objective["type"]
    if kind == "masked_lm":
        kept = 1 - objective["mask_replace_probability"] - objective["random_replace_probability"]
        return (
            f"**masked language modelling** (BERT's recipe): {_pct(objective['mask_probability'])} of the "
            f"non-special tokens are chosen{' a whole word at a time' if objective['whole_word'] else ''}; of "
            f"those, {_pct(objective['mask_replace_probability'])} become the mask token, "
            f"{_pct(objective['random_replace_probability'])} a random token and {_pct(kept)} stay, and the "
            "model predicts the chosen tokens from both sides"
        )
    if kind == "span_corruption":
        return (
            f"**span corruption** (T5's recipe): {_pct(objective['noise_density'])} of the tokens are dropped "
            f"in spans of mean length {objective['mean_span_length']:g}, each span replaced by one sentinel "
            "(`<extra_id_0>`, `<extra_id_1>`, …); the decoder writes each sentinel followed by the tokens it hid, "
            "then `</s>`"
        )
    if kind == "contrastive":
        return (
            "**contrastive sentence embeddings** (unsupervised SimCSE): each sentence of the corpus is encoded "
            "twice with dropout as the only difference, and must pick its twin out of the batch (in-batch "
            f"negatives, cosine similarity / temperature {objective['temperature']:g}, {objective['pooling']} "
            "pooling)"
        )
    return "**causal language modelling**: predict each next token from the ones before it"


def render_model_card(lineage: dict[str, Any]) -> str:
    """Markdown describing a checkpoint from its lineage record."""
    spec = lineage["job"]["spec"]
    model, training, tokenizer = spec["model"], spec["training"], spec["tokenizer"]
    objective = spec["objective"]
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
    return f"""---
library_name: transformers
tags: [selfsup, {objective["type"]}, {model["family"]}]
---

# {lineage["job"]["name"]} — checkpoint v{ckpt["version"]}{" (final)" if ckpt["final"] else ""}

A `{model["family"]}` model pretrained from random weights by selfsup, on unlabeled text only, with
{describe_objective(objective)}.

## Model
- Family `{model["family"]}`: {_shape(model)}.
- {lineage["parameters"]:,} parameters.
- Tokenizer: {tok_desc}, trained on the training split of the corpora below. Special tokens: {specials}.

## Training
- {ckpt["step"]:,} of {training["max_steps"]:,} steps, {ckpt["tokens_seen"]:,} tokens seen
  ({_tokens_per_step(spec)}).
- AdamW, learning rate {training["learning_rate"]} (warmup {training["warmup_steps"]} steps, cosine to
  {training["min_learning_rate"]}), weight decay {training["weight_decay"]}, betas {training["betas"]},
  gradient clip {training["grad_clip"]}, seed {training["seed"]}, precision {training["precision"]}.
- Job `{lineage["job"]["id"]}`; the full spec and lineage are in `selfsup.json`.

## Corpora
Tokens: {data["train_tokens"]:,} for training, {data["validation_tokens"]:,} for validation.

| name | id | sha256 | documents | tokens (train / validation) |
| --- | --- | --- | --- | --- |
{corpora_rows}

## Metrics at this checkpoint
| metric | value |
| --- | --- |
{metric_rows}

## Load it
```python
{_snippet(objective["type"])}
```
"""


def _snippet(objective: str) -> str:
    loader = _LOADERS.get(objective, "AutoModel")
    extra_import = ", pipeline" if objective == "masked_lm" else ""
    lines = [
        f"from transformers import AutoTokenizer, {loader}{extra_import}",
        "",
        'path = "path/to/this/folder"',
        "tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)",
        f"model = {loader}.from_pretrained(path, local_files_only=True)",
    ]
    if objective == "causal_lm":
        lines += [
            'out = model.generate(**tokenizer("ROMEO:", return_tensors="pt"), max_new_tokens=50, do_sample=True)',
            "print(tokenizer.decode(out[0]))",
        ]
    elif objective == "masked_lm":
        lines += [
            'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
            'print(fill(f"Before we proceed any {tokenizer.mask_token}, hear me speak."))',
            "# Fine-tune: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)",
        ]
    elif objective == "span_corruption":
        lines += [
            'inputs = tokenizer("Before we <extra_id_0> any further, hear me speak.", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=10)[0]))",
            "# Fine-tune as any T5: model(**tokenizer(sources, text_target=targets, return_tensors='pt')).loss",
        ]
    elif objective == "contrastive":
        lines += [
            "",
            "# Or, with sentence-transformers installed (the pooling is configured in this folder):",
            "from sentence_transformers import SentenceTransformer",
            "",
            "embedder = SentenceTransformer(path)",
            'embeddings = embedder.encode(["Before we proceed any further, hear me speak.", "Speak, speak."])',
            "# Fine-tune: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)",
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


def _tokens_per_step(spec: dict[str, Any]) -> str:
    training, model, objective = spec["training"], spec["model"], spec["objective"]["type"]
    length = model["context_length"]
    per_example = {
        "causal_lm": f"{length} tokens",
        "masked_lm": f"{length} tokens",
        "span_corruption": f"a window of text whose corrupted input fills {length} tokens",
        "contrastive": f"one sentence of at most {length} tokens, counted as {length}",
    }[objective]
    return f"batch {training['batch_size']} × {training['grad_accum_steps']} accumulation × {per_example}"


def _tokens(counts: dict[str, int] | None) -> str:
    if not counts:
        return "—"
    return f"{counts.get('train', 0):,} / {counts.get('validation', 0):,}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"
