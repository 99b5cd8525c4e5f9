"""Decontamination: an evaluation passage planted in a training document is found, as datatrove finds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import ngrams, simplify_text

from selfsup.curation_spec import Decontamination
from tests.workers.data.curation.texts import prose, words
from workers.data.curation.decontamination import REASON, DecontaminationFilter

EVAL = [" ".join(words(40, seed=7)), "Too short to index."]


def _training() -> list[str]:
    passage13 = " ".join(words(40, seed=7)[10:23]).upper() + "!"  # 13 words, case and punctuation differ
    passage12 = " ".join(words(40, seed=7)[10:22])
    return [
        prose(80, seed=1) + "\n" + passage13 + "\n" + prose(30, seed=2),
        prose(80, seed=1) + "\n" + passage12 + "\n" + prose(30, seed=2),
        prose(80, seed=3),
    ]


def test_thirteen_words_contaminate_twelve_do_not() -> None:
    f = DecontaminationFilter(Decontamination(), EVAL)
    assert [f.apply(doc).reason for doc in _training()] == [REASON, None, None]
    assert DecontaminationFilter(Decontamination(n_grams=12), EVAL).apply(_training()[1]).reason == REASON
    assert DecontaminationFilter(Decontamination(), []).apply(_training()[0]).kept


def test_same_verdicts_as_datatrove(tmp_path: Path) -> None:
    config = NGramsDecontConfig(n_grams=13, hash_config=HashConfig(precision=64, hash_fc="sha1"))
    hash_func = create_hash_func(config.hash_config)
    hashes = [
        hash_func(" ".join(g)) for text in EVAL for g in ngrams(simplify_text(text, config.norm_config).split(), 13)
    ]
    np.array(hashes, dtype="<u8").tofile(tmp_path / "eval.index.hashes")
    theirs = NGramsDecontFilter(str(tmp_path), config=config)
    ours = DecontaminationFilter(Decontamination(), EVAL)
    for doc in _training():
        assert ours.apply(doc).kept == (theirs.filter(Document(text=doc, id="")) is True)
