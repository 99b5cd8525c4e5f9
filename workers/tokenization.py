"""Train a tokenizer on a training split and turn documents into flat token arrays.

Every tokenizer is a Hugging Face `tokenizers` object saved with `transformers`' fast-tokenizer
wrapper, so `AutoTokenizer.from_pretrained(dir)` loads it offline with the right special tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from selfsup.spec import BPETokenizerSpec, CharTokenizerSpec

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"


def train_char_tokenizer(documents: Iterable[str]) -> PreTrainedTokenizerFast:
    """One token per distinct character of the training split, plus end-of-text and unknown."""
    alphabet: set[str] = set()
    for doc in documents:
        alphabet.update(doc)
    vocab = {END_OF_TEXT: 0, UNKNOWN: 1}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    # Split into single characters (newlines included) and glue them back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([END_OF_TEXT, UNKNOWN])
    return _wrap(tok, unk=UNKNOWN)


def train_bpe_tokenizer(documents: Iterable[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, GPT-2 style: no unknown token, every byte sequence encodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return _wrap(tok, unk=None)


def _wrap(tok: Tokenizer, *, unk: str | None) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=unk,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(spec: CharTokenizerSpec | BPETokenizerSpec, documents: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train the tokenizer the spec asks for on `documents`."""
    if isinstance(spec, CharTokenizerSpec):
        return train_char_tokenizer(documents)
    return train_bpe_tokenizer(documents, vocab_size=spec.vocab_size)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_token_array(
    tokenizer: PreTrainedTokenizerFast, documents: Iterable[str], path: Path, *, batch_docs: int = 256
) -> int:
    """Encode documents into a flat array file, each document followed by end-of-text; returns the count."""
    eos = int(tokenizer.convert_tokens_to_ids(END_OF_TEXT))  # type: ignore[arg-type]
    dtype = token_dtype(len(tokenizer))
    backend: Tokenizer = tokenizer.backend_tokenizer
    total = 0
    with open(path, "wb") as fh:
        for chunk in _batched(documents, batch_docs):
            encodings = backend.encode_batch(chunk, add_special_tokens=False)
            ids: list[int] = []
            for enc in encodings:
                ids.extend(enc.ids)
                ids.append(eos)
            arr = np.asarray(ids, dtype=dtype)
            fh.write(arr.tobytes())
            total += arr.size
    return total


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
