"""Hand-made documents for the curation tests: prose that passes every rule unless a test changes it."""

from __future__ import annotations

import random

_CONSONANTS = "bcdfghklmnprstvw"
_VOWELS = "aeiou"


def words(n: int, seed: int = 0) -> list[str]:
    """`n` distinct-looking lowercase words of 4 to 7 letters (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 7)
        out.append("".join(rng.choice(_CONSONANTS if i % 2 == 0 else _VOWELS) for i in range(length)))
    return out


def prose(n_words: int, seed: int = 0, per_line: int = 10) -> str:
    """Lines of `per_line` words ending in a full stop, with "the" and "and" (lower case) in the first line."""
    rest = words(max(0, n_words - 2), seed)
    ws = rest[:1] + ["the", "and"] + rest[1:]
    lines = [" ".join(ws[i : i + per_line]).capitalize() + "." for i in range(0, len(ws), per_line)]
    return "\n".join(lines)
