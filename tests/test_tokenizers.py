"""Each tokenizer kind, with tiny vocabularies made in the test."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from packprep.errors import PackprepError
from packprep.tokenizers import load_tokenizer, smallest_token_dtype


def test_cl100k_known_ids_and_plain_text_specials():
    tok = load_tokenizer("cl100k")
    flat, lengths = tok.encode_batch(["hello world", "", "<|endoftext|>"])
    assert flat.dtype == np.uint32 and lengths.dtype == np.int64
    assert lengths.tolist()[:2] == [2, 0]
    assert flat[:2].tolist() == [15339, 1917]
    assert 100257 not in flat.tolist()  # special-looking text stays text
    assert tok.eos_id == 100257 and tok.vocab_size == 100277
    assert smallest_token_dtype(tok.vocab_size) == np.uint32


@pytest.mark.parametrize("text", ["東京は日本の首都です。", "مرحبا بالعالم", "emoji 🚀🔥✨ ok", "tabs\t\t and   spaces\n\n\n"])
def test_cl100k_round_trips_any_script(text):
    tok = load_tokenizer("cl100k_base")
    flat, _ = tok.encode_batch([text])
    assert tok.decode(flat) == text


def make_hf_tokenizer(folder: Path, *, with_config: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator(["the cat sat on the mat", "the dog ate the bone"] * 20, trainer=trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    if with_config:
        (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}, "bos_token": "<s>"}))
    return path


def test_tokenizer_json_encodes_decodes_and_finds_specials(tmp_path):
    path = make_hf_tokenizer(tmp_path / "hf")
    tok = load_tokenizer(str(path))
    assert (tok.eos_id, tok.bos_id) == (2, 1)
    flat, lengths = tok.encode_batch(["the cat sat", "the dog"])
    assert len(flat) == lengths.sum() and lengths.tolist()[0] > 0
    assert tok.decode(flat[: lengths[0]]) == "the cat sat"
    assert smallest_token_dtype(tok.vocab_size) == np.uint16
    # without a config the well-known names are found
    bare = load_tokenizer(str(make_hf_tokenizer(tmp_path / "bare", with_config=False)))
    assert (bare.eos_id, bare.bos_id) == (2, 1)


def make_tiktoken_file(path: Path) -> Path:
    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the"]
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(ranks)))
    return path


def test_tiktoken_file_and_eos_override(tmp_path):
    path = make_tiktoken_file(tmp_path / "tiny.tiktoken")
    tok = load_tokenizer(str(path))
    assert tok.eos_id is None and tok.vocab_size == 259
    flat, _ = tok.encode_batch(["the the"])
    assert flat.tolist() == [257, 258]
    assert tok.decode(flat) == "the the"
    with_eos = load_tokenizer(str(path), eos_id=259)
    assert with_eos.eos_id == 259 and with_eos.vocab_size == 260
    assert with_eos.fingerprint() != tok.fingerprint()
    assert load_tokenizer(str(path)).fingerprint() == tok.fingerprint()


def test_bad_specs_are_user_errors(tmp_path):
    with pytest.raises(PackprepError, match="unknown tokenizer 'gpt9'"):
        load_tokenizer("gpt9")
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(PackprepError, match="file type"):
        load_tokenizer(str(tmp_path / "vocab.txt"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PackprepError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path / "broken.json"))
    with pytest.raises(PackprepError, match="outside the vocabulary"):
        load_tokenizer("cl100k", eos_id=10**6)
    with pytest.raises(PackprepError, match="outside the vocabulary"):
        load_tokenizer("cl100k", eos_id=-1)


def test_pack_with_a_tokenizer_json_end_to_end(tmp_path):
    from packprep import PackedDataset
    from packprep.config import PackConfig, TokenizeConfig
    from packprep.pipeline import pack
    from tests.conftest import write_jsonl

    path = make_hf_tokenizer(tmp_path / "hf")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "the cat sat on the mat"}, {"text": "the dog"}])
    out = pack(corpus, tmp_path / "out", config=PackConfig(seq_len=8), tokenize_config=TokenizeConfig(tokenizer=str(path)))
    ds = PackedDataset(out)
    assert ds.manifest["dtype"] == "uint16" and ds.manifest["sep_id"] == 2
    assert ds.doc_ids[0] == "c.jsonl:1"
