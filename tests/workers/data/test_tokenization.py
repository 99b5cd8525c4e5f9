"""Tokenizers train on a split, round-trip text, and load back through transformers' AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from selfsup.spec import BPETokenizerSpec, CharTokenizerSpec, UnigramTokenizerSpec, WordPieceTokenizerSpec
from tests.factories import write_shakespeare_dataset
from workers.data.datasets import dataset_key, tokenizer_identity
from workers.data.tokenization import END_OF_TEXT, TokenArrayWriter, train_tokenizer, word_boundaries

DOCS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "All:\nSpeak, speak.", "ROMEO:\nO, she doth!"]


@pytest.mark.parametrize("spec", [CharTokenizerSpec(type="char"), BPETokenizerSpec(type="bpe", vocab_size=300)])
def test_tokenizer_roundtrips_and_loads_with_autotokenizer(spec: object, tmp_path: Path) -> None:
    tokenizer = train_tokenizer(spec, DOCS)  # type: ignore[arg-type]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for doc in DOCS:
        ids = loaded(doc)["input_ids"]
        assert loaded.decode(ids) == doc
    assert loaded.eos_token == END_OF_TEXT and loaded.pad_token == END_OF_TEXT

    writer = TokenArrayWriter(tokenizer, tmp_path / "train.bin")
    count = writer.add(DOCS)
    writer.close()
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert len(tokens) == count
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert int((tokens == eos).sum()) == len(DOCS) and tokens[-1] == eos  # each document ends with end-of-text


def test_char_tokenizer_has_one_id_per_character_and_an_unknown() -> None:
    tokenizer = train_tokenizer(CharTokenizerSpec(type="char"), ["abca"])
    assert len(tokenizer) == 2 + 3
    assert tokenizer("abz")["input_ids"][-1] == tokenizer.convert_tokens_to_ids(tokenizer.unk_token)


def test_dataset_key_depends_on_contents_and_tokenizer_only() -> None:
    a = dataset_key(["sha1", "sha2"], {"type": "bpe", "vocab_size": 300})
    assert a == dataset_key(["sha1", "sha2"], {"vocab_size": 300, "type": "bpe"})
    assert a != dataset_key(["sha2", "sha1"], {"type": "bpe", "vocab_size": 300})
    assert a != dataset_key(["sha1", "sha2"], {"type": "bpe", "vocab_size": 301})


@pytest.mark.parametrize(
    ("spec", "specials", "wrapped"),
    [
        (
            WordPieceTokenizerSpec(type="wordpiece", vocab_size=200, special_tokens="bert"),
            {
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
            },
            ("[CLS]", "[SEP]"),
        ),
        (
            BPETokenizerSpec(type="bpe", vocab_size=300, special_tokens="roberta"),
            {
                "bos_token": "<s>",
                "pad_token": "<pad>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
            },
            ("<s>", "</s>"),
        ),
        (
            UnigramTokenizerSpec(type="unigram", vocab_size=300, special_tokens="t5"),
            {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
            (None, "</s>"),
        ),
    ],
)
def test_family_tokenizers_load_with_their_special_tokens(
    spec: object, specials: dict[str, str], wrapped: tuple[str | None, str], tmp_path: Path
) -> None:
    write_shakespeare_dataset(tmp_path, spec, n_bytes=30_000)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer", local_files_only=True)
    for role, token in specials.items():
        assert getattr(loaded, role) == token, role
    text = "Before we proceed any further, hear me speak."
    tokens = loaded.convert_ids_to_tokens(loaded(text)["input_ids"])
    assert (tokens[0] if wrapped[0] else None, tokens[-1]) == wrapped
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert len(loaded) == spec.vocab_size  # type: ignore[attr-defined]  # the specials and sentinels included
    if spec.special_tokens == "t5":  # type: ignore[attr-defined]
        sentinels = [loaded.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)]
        # As in transformers' T5 tokenizers: the last ids, <extra_id_0> the highest.
        assert sentinels == list(range(len(loaded) - 1, len(loaded) - 101, -1))
        assert "<extra_id_0>" in loaded.all_special_tokens


def test_dataset_meta_sentences_and_word_boundaries(tmp_path: Path) -> None:
    spec = WordPieceTokenizerSpec(type="wordpiece", vocab_size=500, special_tokens="bert")
    data = write_shakespeare_dataset(tmp_path, spec, n_bytes=30_000)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer", local_files_only=True)
    special = data.special
    assert (special.pad, special.unk, special.cls, special.sep, special.mask) == (0, 1, 2, 3, 4)
    assert special.eos == special.sep  # documents are joined by [SEP]
    assert data.train_sentences is not None and len(data.train_sentences) > 100
    first = [tokenizer.decode(data.train[start:end]) for start, end in data.train_sentences[:2]]
    assert first == [
        "Before we proceed any further, hear me speak.",
        "You are all resolved rather to die than to famish?",
    ]
    assert all(special.sep not in data.train[start:end] for start, end in data.train_sentences)
    table = data.word_boundaries
    assert table is not None and table.shape == (2, len(tokenizer))
    piece, word = tokenizer.convert_tokens_to_ids(["##s", "the"])
    assert not table[0, piece] and table[0, word]


def test_text_that_spells_a_special_token_is_encoded_as_text(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(WordPieceTokenizerSpec(type="wordpiece", vocab_size=200, special_tokens="bert"), DOCS)
    writer = TokenArrayWriter(tokenizer, tmp_path / "train.bin")
    writer.add(["hear [MASK] speak [SEP]"])
    writer.close()
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    mask, sep = tokenizer.convert_tokens_to_ids(["[MASK]", "[SEP]"])
    assert mask not in tokens and list(tokens).count(sep) == 1  # only the end-of-document separator
    # Inference still reads the special token (fill-mask needs it).
    assert mask in tokenizer("hear [MASK] speak")["input_ids"]


@pytest.mark.parametrize(
    ("spec", "text", "words"),
    [
        (BPETokenizerSpec(type="bpe", vocab_size=300), "hear me speak", ["hear", " me", " speak"]),
        (CharTokenizerSpec(type="char"), "hear me", ["hear", " ", "me"]),
        (UnigramTokenizerSpec(type="unigram", vocab_size=300, special_tokens="t5"), "hear me", ["hear", "me"]),
    ],
)
def test_word_boundaries_group_the_pieces_of_each_word(spec: object, text: str, words: list[str]) -> None:
    import torch

    from models.objectives.masked_lm import word_ids_from_boundaries

    tokenizer = train_tokenizer(spec, DOCS * 3)  # type: ignore[arg-type]
    table = torch.from_numpy(word_boundaries(tokenizer))
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    word_ids = word_ids_from_boundaries(ids, begins_word=table[0], ends_word=table[1], special_ids=[])
    grouped = [tokenizer.decode(ids[0][word_ids[0] == w]) for w in word_ids[0].unique().tolist()]
    assert [w.strip() for w in grouped] == [w.strip() for w in words]


def test_dataset_key_of_a_base_tokenizer_depends_on_its_sha256_not_on_the_spec() -> None:
    spec = {"type": "char", "special_tokens": "gpt2"}
    trained = dataset_key(["sha1"], tokenizer_identity(spec))
    assert trained == dataset_key(["sha1"], spec)  # a job without init_from keeps the key it had
    kept = dataset_key(["sha1"], tokenizer_identity(spec, "tok-a"))
    assert kept != trained  # tokens from a base's tokenizer are never mistaken for a freshly trained one's
    assert kept == dataset_key(["sha1"], tokenizer_identity({"type": "bpe", "vocab_size": 300}, "tok-a"))
    assert kept != dataset_key(["sha1"], tokenizer_identity(spec, "tok-b"))
    assert kept != dataset_key(["sha2"], tokenizer_identity(spec, "tok-a"))


def test_a_base_tokenizer_is_copied_byte_for_byte_and_used_as_it_is(tmp_path: Path) -> None:
    from workers.data.datasets import TOKENIZER_DIR, write_dataset

    write_shakespeare_dataset(tmp_path / "parent", CharTokenizerSpec(type="char"), n_bytes=20_000)
    base = tmp_path / "parent" / TOKENIZER_DIR
    # Other text, and a spec that would train another tokenizer: the base's is used instead.
    docs = {"train": ["zebra quay, 42 ÿ"], "validation": ["xylophone"]}
    meta = write_dataset(
        tmp_path / "child", BPETokenizerSpec(type="bpe", vocab_size=300), {"b": docs.__getitem__}, base_tokenizer=base
    )
    copied = tmp_path / "child" / TOKENIZER_DIR
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in base.iterdir())
    for path in base.iterdir():
        assert (copied / path.name).read_bytes() == path.read_bytes(), path.name
    parent = AutoTokenizer.from_pretrained(base, local_files_only=True)
    assert meta["vocab_size"] == len(parent)
    tokens = np.fromfile(tmp_path / "child" / "train.bin", dtype=np.uint16)
    assert tokens.tolist() == [*parent(docs["train"][0])["input_ids"], parent.eos_token_id]


# ASCII and not, odd whitespace, closing quotes, a control character a normalizer drops, an empty document.
MIXED_DOCS = [
    *DOCS * 40,
    "  \tWhat say you, sir?  I say nothing at all.\r\nAnd then “I go.” Another sentence follows here.\n\n",
    "Café society, naïve as ever! Then the emoji 😀 ends a line here\nand \x01control. Then one more sentence.",
    "",
    "short. x",
]


@pytest.mark.parametrize(
    "spec",
    [
        CharTokenizerSpec(type="char"),
        BPETokenizerSpec(type="bpe", vocab_size=300),
        WordPieceTokenizerSpec(type="wordpiece", vocab_size=300),
        UnigramTokenizerSpec(type="unigram", vocab_size=300),
    ],
)
def test_written_ids_and_sentence_offsets_match_each_documents_own_encoding(spec: object, tmp_path: Path) -> None:
    """The writer (batched, encoding ahead, a shortcut for ASCII; offset-free without sentences) writes what
    encoding each document alone gives: its ids then end-of-text, and for each sentence the tokens that overlap
    it by the token offsets."""
    from models.sentences import sentence_spans

    tokenizer = train_tokenizer(spec, MIXED_DOCS)  # type: ignore[arg-type]
    writer = TokenArrayWriter(tokenizer, tmp_path / "t.bin", sentences_path=tmp_path / "s.npy")
    writer.add(iter(MIXED_DOCS), batch_docs=7)
    writer.close()
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    eos = writer.eos
    ids: list[int] = []
    sentences: list[tuple[int, int]] = []
    for doc in MIXED_DOCS:
        enc = backend.encode(doc, add_special_tokens=False)
        for start, end in sentence_spans(doc):
            inside = [i for i, (a, b) in enumerate(enc.offsets) if b > start and a < end]
            if inside:
                sentences.append((len(ids) + inside[0], len(ids) + inside[-1] + 1))
        ids += [*enc.ids, eos]
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == ids
    assert [tuple(s) for s in np.load(tmp_path / "s.npy").tolist()] == sentences
    assert len(sentences) > 40
    # Without sentence offsets the writer takes the library's offset-free encoder: the same ids.
    ids_only = TokenArrayWriter(tokenizer, tmp_path / "ids.bin")
    ids_only.add(iter(MIXED_DOCS), batch_docs=7)
    ids_only.close()
    assert np.fromfile(tmp_path / "ids.bin", dtype=np.uint16).tolist() == ids
