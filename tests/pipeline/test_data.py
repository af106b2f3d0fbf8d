"""Calibration/evaluation windows as the README describes them."""
import json

import pytest
import torch

from prune_job.data import LazyTokenizer, ids_digest, micro_batches, token_windows
from prune_job.sources.texts import pydoc_text, read_source
from prune_job.spec import SpecError


class CharTokenizer:
    """Deterministic stand-in with a BOS, one id per character."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids = ([1] if add_special_tokens else []) + [2 + (ord(c) % 200) for c in text]
        return {"input_ids": ids[:max_length] if truncation else ids}


def test_pydoc_split_is_disjoint_and_deterministic():
    cal, held = pydoc_text("pydoc"), pydoc_text("pydoc-heldout")
    assert cal and held and cal == pydoc_text("pydoc")
    assert held not in cal and len(held) < len(cal)


def test_txt_windows_are_consecutive_with_bos(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("abcdefghij" * 10)
    w = token_windows(read_source(str(f), "spec.calibration.uri"), CharTokenizer(), 3, 5, 0, "spec.calibration.uri")
    ids = CharTokenizer()("abcdefghij" * 10, add_special_tokens=False)["input_ids"]
    assert [x.tolist() for x in w] == [[1] + ids[0:4], [1] + ids[4:8], [1] + ids[8:12]]


def test_txt_shortfall_uses_seeded_offsets(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("abcdefghij")
    src = read_source(str(f), "spec.calibration.uri")
    a = token_windows(src, CharTokenizer(), 5, 4, 7, "spec.calibration.uri")
    b = token_windows(src, CharTokenizer(), 5, 4, 7, "spec.calibration.uri")
    assert len(a) == 5 and all(len(x) == 4 for x in a)
    assert ids_digest(a) == ids_digest(b)


def test_jsonl_text_and_exact_ids(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"input_ids": [5, 6, 7]}, {"text": "hello world"}]) + "\n")
    src = read_source(str(f), "spec.calibration.uri")
    w = token_windows(src, CharTokenizer(), 2, 4, 0, "spec.calibration.uri")
    assert w[0].tolist() == [5, 6, 7]  # exactly as given, not padded or truncated
    assert len(w[1]) == 4 and w[1][0] == 1


def test_ids_without_tokenizer_and_text_without_tokenizer(tmp_path):
    f = tmp_path / "ids.jsonl"
    f.write_text('{"input_ids": [1, 2]}\n')
    assert token_windows(read_source(str(f), "x.uri"), None, 1, 8, 0, "x.uri")[0].tolist() == [1, 2]
    g = tmp_path / "t.txt"
    g.write_text("abc")
    with pytest.raises(SpecError, match="tokenizer"):
        token_windows(read_source(str(g), "x.uri"), None, 1, 2, 0, "x.uri")


def test_lazy_tokenizer_is_read_only_for_text(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_text("{not a tokenizer")  # would fail if it were ever loaded
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"input_ids": [1, 2]}\n')
    lazy = LazyTokenizer(model)
    assert token_windows(read_source(str(ids), "x.uri"), lazy, 1, 8, 0, "x.uri")[0].tolist() == [1, 2]
    text = tmp_path / "t.txt"
    text.write_text("abc")
    with pytest.raises(Exception):
        token_windows(read_source(str(text), "x.uri"), lazy, 1, 2, 0, "x.uri")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="tokenizer"):
        token_windows(read_source(str(text), "x.uri"), LazyTokenizer(empty), 1, 2, 0, "x.uri")


@pytest.mark.parametrize("content, words", [("{bad json", "not JSON"), ('{"foo": 1}', "expected"), ("", "no rows")])
def test_bad_jsonl(tmp_path, content, words):
    f = tmp_path / "a.jsonl"
    f.write_text(content)
    with pytest.raises(SpecError, match=words):
        read_source(str(f), "spec.calibration.uri")


def test_too_few_rows_and_out_of_vocab(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"input_ids": [1, 300]}\n')
    src = read_source(str(f), "spec.calibration.uri")
    with pytest.raises(SpecError, match="spec.calibration.samples"):
        token_windows(src, None, 2, 8, 0, "spec.calibration.uri")
    with pytest.raises(SpecError, match=r"\[0, 256\)"):
        token_windows(src, None, 1, 8, 0, "spec.calibration.uri", vocab_size=256)


def test_micro_batches_group_equal_lengths():
    ws = [torch.arange(4)] * 5 + [torch.arange(3)]
    batches = micro_batches(ws, tokens_per_batch=8)
    assert sorted(tuple(b.shape) for b in batches) == [(1, 3), (1, 4), (2, 4), (2, 4)]
