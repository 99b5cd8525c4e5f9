"""Train a tokenizer on a training split and turn documents into flat token arrays.

Every tokenizer is a Hugging Face `tokenizers` object saved with `transformers`' fast-tokenizer
wrapper, so `AutoTokenizer.from_pretrained(dir)` loads it offline with the right special tokens.
The algorithm (`char`, `bpe`, `wordpiece`, `unigram`) and the special tokens (a model family's
convention, `SPECIAL_TOKEN_SETS`) are independent: any algorithm can carry any family's specials.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from models.sentences import sentence_spans
from selfsup.spec import (
    BPETokenizerSpec,
    CharTokenizerSpec,
    SpecialTokens,
    UnigramTokenizerSpec,
    WordPieceTokenizerSpec,
)
from selfsup.spec_types import T5_SENTINELS

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"
METASPACE = "\u2581"

AnyTokenizerSpec = CharTokenizerSpec | BPETokenizerSpec | WordPieceTokenizerSpec | UnigramTokenizerSpec


@dataclass(frozen=True)
class SpecialTokenSet:
    """A family's special tokens: their order (ids 0, 1, …), roles, and what `tokenizer(text)` adds."""

    convention: SpecialTokens
    tokens: tuple[str, ...]
    eos: str  # also the separator between documents in the flat token arrays
    unk: str | None
    pad: str
    bos: str | None = None
    cls: str | None = None
    sep: str | None = None
    mask: str | None = None
    # Appended after the learned vocabulary, `<extra_id_0>` last (highest id), as T5 does.
    sentinels: tuple[str, ...] = ()
    single: str = "$A"
    pair: str = "$A $B"
    template_tokens: tuple[str, ...] = field(default=())


def special_token_set(convention: SpecialTokens, *, needs_unknown: bool) -> SpecialTokenSet:
    """The special tokens of `convention`; gpt2's includes an unknown token only where the algorithm needs one."""
    if convention == "gpt2":
        return SpecialTokenSet(
            convention,
            (END_OF_TEXT, UNKNOWN) if needs_unknown else (END_OF_TEXT,),
            eos=END_OF_TEXT,
            bos=END_OF_TEXT,
            pad=END_OF_TEXT,
            unk=UNKNOWN if needs_unknown else None,
        )
    if convention == "bert":
        return SpecialTokenSet(
            convention,
            ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
            eos="[SEP]",
            unk="[UNK]",
            pad="[PAD]",
            cls="[CLS]",
            sep="[SEP]",
            mask="[MASK]",
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            template_tokens=("[CLS]", "[SEP]"),
        )
    if convention == "roberta":
        return SpecialTokenSet(
            convention,
            ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
            eos="</s>",
            unk="<unk>",
            pad="<pad>",
            bos="<s>",
            cls="<s>",
            sep="</s>",
            mask="<mask>",
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            template_tokens=("<s>", "</s>"),
        )
    return SpecialTokenSet(
        convention,
        ("<pad>", "</s>", "<unk>"),
        eos="</s>",
        unk="<unk>",
        pad="<pad>",
        sentinels=tuple(f"<extra_id_{i}>" for i in reversed(range(T5_SENTINELS))),
        single="$A </s>",
        pair="$A </s> $B </s>",
        template_tokens=("</s>",),
    )


def train_char_tokenizer(
    documents: Iterable[str], *, special_tokens: SpecialTokens = "gpt2"
) -> PreTrainedTokenizerFast:
    """One token per distinct character of the training split, after the special tokens."""
    specials = special_token_set(special_tokens, needs_unknown=True)
    alphabet: set[str] = set()
    for doc in documents:
        alphabet.update(doc)
    vocab = {token: i for i, token in enumerate(specials.tokens)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials.unk))
    # Split into single characters (newlines included) and glue them back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _finish(tok, specials)


def train_bpe_tokenizer(
    documents: Iterable[str], *, vocab_size: int, special_tokens: SpecialTokens = "gpt2"
) -> PreTrainedTokenizerFast:
    """Byte-level BPE, GPT-2 style: no unknown token is ever needed, every byte sequence encodes."""
    specials = special_token_set(special_tokens, needs_unknown=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials.sentinels),
        special_tokens=list(specials.tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return _finish(tok, specials)


def train_wordpiece_tokenizer(
    documents: Iterable[str], *, vocab_size: int, special_tokens: SpecialTokens = "bert"
) -> PreTrainedTokenizerFast:
    """WordPiece, BERT style but cased: split at whitespace and punctuation; later pieces start with ##."""
    specials = special_token_set(special_tokens, needs_unknown=True)
    tok = Tokenizer(models.WordPiece(unk_token=specials.unk))  # type: ignore[arg-type]
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size - len(specials.sentinels),
        special_tokens=list(specials.tokens),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return _finish(tok, specials)


def train_unigram_tokenizer(
    documents: Iterable[str], *, vocab_size: int, special_tokens: SpecialTokens = "t5"
) -> PreTrainedTokenizerFast:
    """Unigram LM, SentencePiece/T5 style: whitespace runs become one ▁, which starts the next piece."""
    specials = special_token_set(special_tokens, needs_unknown=True)
    tok = Tokenizer(models.Unigram())
    # Like T5's SentencePiece model: NFKC, and any run of whitespace (newlines too) is one space.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(specials.sentinels),
        special_tokens=list(specials.tokens),
        unk_token=specials.unk,
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return _finish(tok, specials)


def _finish(tok: Tokenizer, specials: SpecialTokenSet) -> PreTrainedTokenizerFast:
    """Register the specials, add the family's template, and wrap for `transformers`."""
    tok.add_special_tokens(list(specials.tokens))
    if specials.sentinels:
        tok.add_special_tokens(list(specials.sentinels))
    if specials.template_tokens:
        tok.post_processor = processors.TemplateProcessing(
            single=specials.single,
            pair=specials.pair,
            special_tokens=[(t, tok.token_to_id(t)) for t in specials.template_tokens],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=specials.pad,
        unk_token=specials.unk,
        cls_token=specials.cls,
        sep_token=specials.sep,
        mask_token=specials.mask,
        additional_special_tokens=list(specials.sentinels) or None,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(spec: AnyTokenizerSpec, documents: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train the tokenizer the spec asks for on `documents` (special tokens: the spec's, else gpt2's)."""
    convention: SpecialTokens = spec.special_tokens or "gpt2"
    if isinstance(spec, CharTokenizerSpec):
        return train_char_tokenizer(documents, special_tokens=convention)
    if isinstance(spec, BPETokenizerSpec):
        return train_bpe_tokenizer(documents, vocab_size=spec.vocab_size, special_tokens=convention)
    if isinstance(spec, WordPieceTokenizerSpec):
        return train_wordpiece_tokenizer(documents, vocab_size=spec.vocab_size, special_tokens=convention)
    return train_unigram_tokenizer(documents, vocab_size=spec.vocab_size, special_tokens=convention)


def special_token_meta(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """The ids of each special role, for a dataset's `meta.json` (None where the convention has none)."""

    def id_of(token: object) -> int | None:
        return int(tokenizer.convert_tokens_to_ids(str(token))) if token else None  # type: ignore[arg-type]

    sentinels = [t for t in tokenizer.all_special_tokens if t.startswith("<extra_id_")]
    sentinels.sort(key=lambda t: int(t[len("<extra_id_") : -1]))
    return {
        "eos_token_id": id_of(tokenizer.eos_token),
        "unk_token_id": id_of(tokenizer.unk_token),
        "pad_token_id": id_of(tokenizer.pad_token),
        "bos_token_id": id_of(tokenizer.bos_token),
        "cls_token_id": id_of(tokenizer.cls_token),
        "sep_token_id": id_of(tokenizer.sep_token),
        "mask_token_id": id_of(tokenizer.mask_token),
        "sentinel_token_ids": [id_of(t) for t in sentinels],
        "special_token_ids": sorted({int(i) for i in tokenizer.all_special_ids}),
    }


def word_boundaries(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """A (2, vocab) bool table: row 0, the token begins a word; row 1, a word ends after it.

    WordPiece marks continuations with `##`; unigram marks word starts with `▁` (whitespace always
    opens the next piece). Byte-level BPE and characters keep whitespace in the token's surface
    (`Ġ`, `Ċ`, a space): a token that starts with whitespace begins a word, one that ends with
    whitespace ends it. Special tokens are words of their own.
    """
    backend: Tokenizer = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    table = np.ones((2, len(tokenizer)), dtype=bool)
    special = set(tokenizer.all_special_tokens)
    kind = type(backend.model).__name__
    byte_decoder = decoders.ByteLevel()
    for token, index in vocab.items():
        if token in special or index >= table.shape[1]:
            continue
        if kind == "WordPiece":
            table[0, index], table[1, index] = not token.startswith("##"), False
        elif kind == "Unigram":
            table[0, index], table[1, index] = token.startswith(METASPACE), False
        else:
            surface = byte_decoder.decode([token]) if kind == "BPE" else token
            table[0, index], table[1, index] = surface[:1].isspace(), surface[-1:].isspace()
    return table


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class TokenArrayWriter:
    """Appends encoded documents to a flat token array file, each document followed by end-of-text.

    With `sentences_path`, also records the `(start, end)` token offsets into the flat array of each
    sentence (by `models.sentences.sentence_spans`), saved on `close()` as an int64 `.npy` array of
    shape (n, 2): the sentences contrastive training draws from.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, path: Path, *, sentences_path: Path | None = None) -> None:
        self.eos = int(tokenizer.convert_tokens_to_ids(tokenizer.eos_token or END_OF_TEXT))  # type: ignore[arg-type]
        self.dtype = token_dtype(len(tokenizer))
        self.backend: Tokenizer = tokenizer.backend_tokenizer
        self.sentences_path = sentences_path
        self.sentences: list[np.ndarray] = []
        self.total = 0
        self.file = open(path, "wb")

    def add(self, documents: Iterable[str], *, batch_docs: int = 512) -> int:
        """Encode and append `documents`; returns the number of tokens written.

        The library encodes a batch on every core (its Rayon pool, outside the GIL) while this thread turns the
        batch before into ids and sentence offsets, so the Python work overlaps the encoding instead of
        following it.
        """
        written = 0
        # Character offsets are read only for sentence spans; without them the library's offset-free batch
        # encoder gives the same ids faster.
        encode = self.backend.encode_batch if self.sentences_path is not None else self.backend.encode_batch_fast
        # Text that spells a special token ("[MASK]", "<extra_id_0>") is text, not the token.
        self.backend.encode_special_tokens = True
        try:
            with ThreadPoolExecutor(max_workers=1) as encoder:
                pending: tuple[list[str], Future[list[Encoding]]] | None = None
                for chunk in itertools.chain(_batched(documents, batch_docs), [None]):
                    upcoming = None
                    if chunk is not None:
                        upcoming = (chunk, encoder.submit(encode, chunk, add_special_tokens=False))
                    if pending is not None:
                        written += self._write(pending[0], pending[1].result())
                    pending = upcoming
        finally:
            self.backend.encode_special_tokens = False
        return written

    def _write(self, chunk: list[str], encodings: list[Encoding]) -> int:
        """Append one encoded batch (each document's ids, then end-of-text) and its sentences' token offsets."""
        ids = [enc.ids for enc in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
        starts = self.total + np.cumsum(lengths) - lengths  # where each document's tokens begin in the array
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(doc_ids, (self.eos,)) for doc_ids in ids),
            dtype=self.dtype,
            count=int(lengths.sum()),
        )
        if self.sentences_path is not None:
            for doc, enc, start in zip(chunk, encodings, starts.tolist(), strict=True):
                self.sentences.append(_sentence_token_spans(doc, enc) + start)
        self.file.write(flat.tobytes())
        self.total += flat.size
        return flat.size

    def close(self) -> None:
        """Finish the array file (and write the sentence offsets)."""
        self.file.close()
        if self.sentences_path is not None:
            spans = np.concatenate(self.sentences) if self.sentences else np.zeros((0, 2), dtype=np.int64)
            with open(self.sentences_path, "wb") as fh:
                np.save(fh, spans.astype(np.int64))


def _sentence_token_spans(text: str, encoding: Encoding) -> np.ndarray:
    """Token `(start, end)` index pairs of `text`'s sentences: the tokens overlapping each sentence."""
    spans = sentence_spans(text)
    if not spans or not len(encoding):
        return np.zeros((0, 2), dtype=np.int64)
    if text.isascii():
        # One character is one byte and sits in exactly one token (or none, where a normalizer drops it): the
        # tokens of a sentence run from the one holding its first character to the one holding its last.
        # Two lookups a sentence, instead of every token's offsets.
        first = [encoding.char_to_token(start) for start, _ in spans]
        last = [encoding.char_to_token(end - 1) for _, end in spans]
        if None not in first and None not in last:
            token_spans = np.array([first, last], dtype=np.int64).T
            token_spans[:, 1] += 1
            return token_spans
    offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    chars = np.asarray(spans, dtype=np.int64)
    # A token belongs to a sentence if it ends after the sentence starts and starts before it ends
    # (a byte-level token such as "ĠHow" starts at the space before the sentence).
    first_token = np.searchsorted(offsets[:, 1], chars[:, 0], side="right")
    last_token = np.searchsorted(offsets[:, 0], chars[:, 1], side="left")
    token_spans = np.stack([first_token, last_token], axis=1)
    return token_spans[token_spans[:, 1] > token_spans[:, 0]]


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
