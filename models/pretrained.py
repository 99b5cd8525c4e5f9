"""Check that a folder is a Hugging Face model selfsup can start from: a known family, safetensors weights whose
shapes match its config, and a tokenizer that loads.

Nothing here runs code from the folder: weights are read as safetensors (never unpickled), only their headers
(names and shapes), and compared with the model the config describes, built on the meta device (no memory for
weights); config and tokenizer load with `local_files_only` and without `trust_remote_code`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoTokenizer,
    BertForMaskedLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
    RobertaForMaskedLM,
    T5ForConditionalGeneration,
)

# Each family selfsup trains, as the class its objectives build (models/build.py) and that `config.json`'s
# `model_type` names.
PRETRAINED_CLASSES: dict[str, type[PreTrainedModel]] = {
    "gpt2": GPT2LMHeadModel,
    "llama": LlamaForCausalLM,
    "bert": BertForMaskedLM,
    "roberta": RobertaForMaskedLM,
    "t5": T5ForConditionalGeneration,
}
# Formats that unpickle (and so may run code) when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# The files a vocabulary is read from: a fast tokenizer's, or a slow one's (BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")
_SHOWN = 3  # how many offending names an error message lists
# Where each family's config says how deep it is (T5's decoder depth too).
_LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "num_decoder_layers")


class PretrainedRefused(ValueError):
    """The folder is not a model selfsup can start from; the message says what to fix."""


@dataclass(frozen=True)
class PretrainedSummary:
    """What a valid folder holds."""

    family: str
    parameters: int
    vocab_size: int  # rows of the input embedding


def check_pretrained_folder(folder: Path) -> PretrainedSummary:
    """Validate a Hugging Face model folder; raises PretrainedRefused saying what is wrong."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    pickled = [name for name in names if name.lower().endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise PretrainedRefused(
            f"pickled files are refused ({_some(pickled)}): loading a pickle can run arbitrary code, so selfsup "
            "reads weights from safetensors only; re-save the model with save_pretrained(safe_serialization=True) "
            "and leave the pickled files out of the archive"
        )
    family = _family(folder)
    model_class = PRETRAINED_CLASSES[family]
    config_class = model_class.config_class
    assert config_class is not None  # every class in PRETRAINED_CLASSES names its config class
    try:
        config = config_class.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse config.json is the uploader's to fix
        raise PretrainedRefused(f"config.json does not load as a {family} config: {exc}") from exc
    stored = _stored_shapes(folder)
    # Each layer has several tensors: a config claiming more layers than the weights hold tensors cannot match
    # them, and building it (even on the meta device) could keep the worker busy for a long time.
    layers = max((v for k in _LAYER_KEYS if isinstance(v := getattr(config, k, None), int)), default=0)
    if layers > len(stored):
        raise PretrainedRefused(
            f"config.json describes {layers} layers but the weights hold only {len(stored)} tensors: "
            "the weights do not match config.json"
        )
    try:
        with torch.device("meta"):  # the shapes the config implies, without allocating the weights
            model = model_class(config)
    except Exception as exc:  # noqa: BLE001 - a config whose values cannot build the model is the uploader's to fix
        raise PretrainedRefused(f"config.json does not describe a buildable {family} model: {exc}") from exc
    _compare_shapes(model, stored)
    embedding = model.get_input_embeddings().weight
    assert isinstance(embedding, torch.Tensor)
    vocab_rows = int(embedding.shape[0])
    _check_tokenizer(folder, vocab_rows)
    parameters = sum(p.numel() for p in model.parameters())
    return PretrainedSummary(family=family, parameters=parameters, vocab_size=vocab_rows)


def _family(folder: Path) -> str:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PretrainedRefused(
            "no config.json at the top of the archive: archive the folder save_pretrained wrote "
            "(config.json, model.safetensors and the tokenizer's files)"
        )
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PretrainedRefused(f"config.json is not valid JSON: {exc}") from exc
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in PRETRAINED_CLASSES:
        raise PretrainedRefused(
            f"unknown architecture {model_type!r} (config.json model_type): selfsup trains "
            f"{', '.join(PRETRAINED_CLASSES)} models"
        )
    return str(model_type)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PretrainedRefused(f"{SAFETENSORS_INDEX} has no valid weight_map: {exc}") from exc
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise PretrainedRefused(f"{SAFETENSORS_INDEX} names shards the archive lacks: {_some(missing)}")
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PretrainedRefused(
            "no safetensors weights (model.safetensors, or shards with model.safetensors.index.json): "
            "save the model with save_pretrained(safe_serialization=True)"
        )
    return files


def _stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the safetensors headers alone."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _weight_files(folder):
        name = path.relative_to(folder).as_posix()
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shapes[key] = tuple(weights.get_slice(key).get_shape())
        except (SafetensorError, OSError, ValueError) as exc:
            raise PretrainedRefused(f"{name} is not a valid safetensors file: {exc}") from exc
    return shapes


def _compare_shapes(model: PreTrainedModel, stored: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights whose shapes differ from the model's, or that lack part of its body.

    A bare base model (`GPT2Model`, `BertModel`) saves its tensors without the base prefix (`transformer.`,
    `bert.`); they are matched as `from_pretrained` matches them. A missing head (a masked-LM head on a bare
    encoder) is fine: it starts from fresh weights, as `from_pretrained` would start it. Tied tensors count as
    present when any of their names is stored.
    """
    prefix = model.base_model_prefix
    has_base = bool(prefix) and hasattr(model, prefix)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if has_base and not any(key.startswith(prefix + ".") for key in stored):
        stored = {f"{prefix}.{key}": shape for key, shape in stored.items()}
    mismatched = [
        f"{name} is {list(stored[name])} in the weights but {list(shape)} for config.json"
        for name, shape in expected.items()
        if name in stored and stored[name] != shape
    ]
    if mismatched:
        raise PretrainedRefused(
            f"the weights do not match config.json ({len(mismatched)} tensors differ): {'; '.join(mismatched[:_SHOWN])}"
            " — were they saved from another config?"
        )
    aliases: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(tensor), []).append(name)
    present = {name for names in aliases.values() if any(n in stored for n in names) for name in names}
    missing = [
        name
        for name in expected
        if name not in stored and name not in present and (not has_base or name.startswith(prefix + "."))
    ]
    if missing:
        raise PretrainedRefused(
            f"the weights lack {len(missing)} of the model's tensors ({_some(missing)}): the safetensors files do "
            "not hold the model config.json describes"
        )


def _check_tokenizer(folder: Path, vocab_rows: int) -> None:
    # A transformers 5 tokenizer class builds an empty vocabulary when its files are missing, so ask for them.
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PretrainedRefused(
            f"the tokenizer does not load: the archive has none of its files ({', '.join(TOKENIZER_FILES)}); "
            "include the files tokenizer.save_pretrained writes"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - whatever the tokenizer files lack is the uploader's to fix
        raise PretrainedRefused(
            f"the tokenizer does not load ({type(exc).__name__}: {exc}): include the files tokenizer.save_pretrained "
            "writes (tokenizer.json, tokenizer_config.json, special_tokens_map.json)"
        ) from exc
    if len(tokenizer) > vocab_rows:
        raise PretrainedRefused(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab_rows} rows: "
            "some token ids would have no embedding"
        )


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown} and {len(names) - _SHOWN} more"
