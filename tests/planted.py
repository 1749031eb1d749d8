"""Planted near-duplicates for the dedup test and benchmark (tests/stages/test_dedup.py, benchmarks/bench_dedup.py).

Two kinds of copy, as issue 12 describes them:
- formatting: the same words re-cased (all lower, all upper, or some words capitalised or
  upper-cased), joined by whitespace runs (double spaces, tabs), re-wrapped at another
  line width, and with the final period added or removed;
- light edit: a formatting copy in which about one word in 60 (at least one) is
  inserted, deleted or replaced by a word (letters only) of another document.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

EDIT_RATE = 60  # one edit per this many words


def formatting_copy(text: str, rng: random.Random) -> str:
    return _format(text.split(), rng)


def edited_copy(text: str, rng: random.Random, vocabulary: Sequence[str]) -> str:
    words = text.split()
    for _ in range(max(1, round(len(words) / EDIT_RATE))):
        op, at = rng.choice(("insert", "delete", "replace")), rng.randrange(len(words))
        if op == "insert":
            words.insert(at, rng.choice(vocabulary))
        elif op == "delete" and len(words) > 1:
            del words[at]
        else:
            words[at] = rng.choice(vocabulary)
    return _format(words, rng)


def _format(words: list[str], rng: random.Random) -> str:
    case = rng.choice(("lower", "upper", "some"))
    if case == "lower":
        words = [w.lower() for w in words]
    elif case == "upper":
        words = [w.upper() for w in words]
    else:
        words = [rng.choice((str.upper, str.capitalize))(w) if rng.random() < 0.2 else w for w in words]
    if words and words[-1].endswith("."):
        words[-1] = words[-1][:-1]
    elif words:
        words[-1] += "."
    width, line, out = rng.randint(30, 100), 0, []
    for i, word in enumerate(words):
        if i:
            gap = "\n" if line + len(word) > width else rng.choice((" ", " ", " ", "  ", "\t", " \t "))
            line = 0 if gap == "\n" else line + len(gap)
            out.append(gap)
        out.append(word)
        line += len(word)
    return "".join(out)


def plant(
    texts: Sequence[str], *, formatting: int, edited: int, seed: int = 0, min_edit_words: int = EDIT_RATE
) -> tuple[list[str], list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """``texts`` (distinct documents) plus ``formatting`` formatting copies and ``edited`` edited
    copies of other documents (of at least ``min_edit_words`` words), shuffled together.

    Returns the texts, their kinds ("distinct", "source", "formatting", "edited"), and the
    (source, copy) index pairs of each kind in the returned order.
    """
    rng = random.Random(seed)
    # Inserted and replacing words are plain words: a URL would be one "word" here but many after normalisation.
    vocabulary = [w for t in texts[:: max(1, len(texts) // 200)] for w in t.split() if w.isalpha()]
    long_enough = [i for i, t in enumerate(texts) if len(t.split()) >= min_edit_words]
    edit_sources = rng.sample(long_enough, edited)
    taken = set(edit_sources)
    format_sources = rng.sample([i for i in range(len(texts)) if i not in taken], formatting)
    docs = [(t, "distinct", i) for i, t in enumerate(texts)]
    docs += [(formatting_copy(texts[i], rng), "formatting", i) for i in format_sources]
    docs += [(edited_copy(texts[i], rng, vocabulary), "edited", i) for i in edit_sources]
    rng.shuffle(docs)
    position = {i: p for p, (_, kind, i) in enumerate(docs) if kind == "distinct"}
    kinds = ["source" if kind == "distinct" and i in taken | set(format_sources) else kind for _, kind, i in docs]
    pairs = {k: [(position[i], p) for p, (_, kind, i) in enumerate(docs) if kind == k] for k in ("formatting", "edited")}
    return [t for t, _, _ in docs], kinds, pairs["formatting"], pairs["edited"]
