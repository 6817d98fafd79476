"""masllm.data: sources, packing, the train / importance / eval cut, caching, the local tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masllm.tasks.text import domains as data
from masllm.tasks.text import packing
from masllm.tasks.text.domains import DomainConfig
from masllm.tasks.text.packing import EOS, cut_blocks, load_domain, pack, train_bpe_tokenizer

TEXTS = [f"document {i}: " + " ".join(f"word{(i * 7 + k) % 50}" for k in range(40)) for i in range(30)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def test_pack_joins_documents_with_eos_and_cuts_full_blocks(tokenizer):
    docs = TEXTS[:5]
    stream = []
    for d in docs:  # reference: one document at a time
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = pack(docs, tokenizer, block_size=16)
    n = len(stream) // 16
    assert blocks.shape == (n, 16) and blocks.dtype == np.int32
    assert blocks.reshape(-1).tolist() == stream[: n * 16]
    assert tokenizer.decode(stream[: len(tokenizer(docs[0])["input_ids"])]) == docs[0]


def test_cut_is_contiguous_and_disjoint():
    blocks = np.arange(40).reshape(20, 2)
    parts = cut_blocks(blocks, eval_fraction=0.1, heldout_fraction=0.25)
    assert [len(parts[k]) for k in ("train", "heldout", "eval")] == [13, 5, 2]
    assert np.concatenate([parts["train"], parts["heldout"], parts["eval"]]).tolist() == blocks.tolist()
    with pytest.raises(ValueError, match="too few"):
        cut_blocks(blocks[:2], 0.5, 0.5)
    parts = cut_blocks(blocks, eval_fraction=0.1, heldout_fraction=0.0, validation_fraction=0.15)
    assert [len(parts[k]) for k in ("train", "heldout", "validation", "eval")] == [15, 0, 3, 2]
    order = [parts[k] for k in ("train", "validation", "eval")]
    assert np.concatenate(order).tolist() == blocks.tolist()


@pytest.mark.parametrize("layout", ["txt_folder", "jsonl"])
def test_local_sources_and_cache(tmp_path, tokenizer, layout, monkeypatch):
    if layout == "txt_folder":
        src = tmp_path / "docs"
        src.mkdir()
        for i, t in enumerate(TEXTS):
            (src / f"{i:02d}.txt").write_text(t)
    else:
        src = tmp_path / "docs.jsonl"
        src.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    domain = DomainConfig(
        name="local", source=str(src), text_field="body" if layout == "jsonl" else "text",
        importance="heldout", heldout_fraction=0.2, max_eval_blocks=3,
    )  # fmt: skip
    sets = load_domain(domain, tokenizer, 16, tmp_path / "cache", seed=0)
    assert len(sets["eval"]) == 3
    all_blocks = pack(data.shuffled_documents(domain, "train", 0), tokenizer, 16)
    got = np.concatenate([np.asarray(sets[k][:]["input_ids"]) for k in ("train", "importance")])
    assert got.tolist() == all_blocks[: len(got)].tolist()  # train then heldout, in order, disjoint

    calls = []
    monkeypatch.setattr(packing, "build_domain", lambda *a: calls.append(a))
    again = load_domain(domain, tokenizer, 16, tmp_path / "cache", seed=0)  # from the cache
    assert not calls and again["train"][:]["input_ids"].tolist() == sets["train"][:]["input_ids"].tolist()


def test_builtin_sources_are_real_text():
    for name, load in data.BUILTIN_SOURCES.items():
        docs = load()
        assert docs and sum(map(len, docs)) > 10_000, name
    assert any("def " in d for d in data.BUILTIN_SOURCES["python_stdlib"]())


def test_tokenizer_round_trip(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "any text, even ünïcode and code: x = {1: 2}"
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.eos_token == loaded.pad_token == EOS


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "a/b"}, "without '/'"),
        ({"eval_fraction": 1.5}, "eval_fraction"),
        ({"eval_fraction": 0.0}, "eval_split"),
        ({"importance": "heldout", "heldout_fraction": 0.0}, "heldout_fraction"),
        ({"streaming": True}, "max_chars"),
    ],
)
def test_bad_domains_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        DomainConfig(**{"name": "a", "source": "builtin:python_docs", **fields})
    with pytest.raises(ValueError, match="Unknown domain fields"):
        DomainConfig.from_dict({"name": "a", "source": "x", "colour": 1})


def test_unknown_builtin_raises():
    with pytest.raises(ValueError, match="Unknown builtin"):
        data.load_documents("builtin:nope", "train", DomainConfig(name="a", source="builtin:nope"))
