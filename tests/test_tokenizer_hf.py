"""Token ids against the Hugging Face T5 tokenizer built from the same ``spiece.model``
(transformers' T5Tokenizer, as Sentence-T5 tokenises): special-token text inside prompts,
unicode, extra spaces, over-long prompts; and the ``tokenizer.json`` it saves."""

from __future__ import annotations

import pytest

from clippy_rt.config import ClippyConfig
from clippy_rt.tokenizer import T5_EXTRA_IDS, Tokenizer, builtin_corpus, load_tokenizer, train_sentencepiece

transformers = pytest.importorskip("transformers")

EXTRA = 12
MAX_LENGTH = 16
CORPUS = [
    "a red circle", "a photo of a cat.", "a red circle </s> x", "a</s>b", "a </s>b", "a</s> b", "</s>", " </s> ",
    "<pad><pad>", "x <extra_id_0> y", "x<extra_id_1>y", "  many   spaces  ", "<unk>", "a <unk> b",
    f"<extra_id_{EXTRA - 1}>", f"<extra_id_{EXTRA}>", "<extra_id_01>", "é café naïve", "ＡＢＣ ﬁ", "a\tb\n</s>\u3000c",
    "<extra_id_1><extra_id_1>", "</s></s>x", "<<pad>>", "</s", "<s>", "日本語のテキスト", "emoji 🐱 cat",
    "a very long prompt " * 12, "</s> " * 20, "word" * 40,
]


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spiece")
    train_sentencepiece(list(builtin_corpus()), folder / "spiece.model", 400)
    return folder


@pytest.fixture(scope="module")
def hf(spiece_dir):
    return transformers.T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=EXTRA)


def _rows(tokenizer, texts):
    ids, mask = tokenizer.encode(texts)
    return [row[:int(m.sum())].tolist() for row, m in zip(ids, mask)]


def test_sentencepiece_ids_equal_the_hugging_face_t5_tokenizer(spiece_dir, hf):
    mine = Tokenizer(spiece_dir / "spiece.model", max_length=MAX_LENGTH, extra_ids=EXTRA)
    expected = hf(CORPUS, max_length=MAX_LENGTH, truncation=True).input_ids
    assert _rows(mine, CORPUS) == expected
    # Lengths before truncation, as the tokenizer counts them.
    full = hf(CORPUS).input_ids
    assert mine.tokenize_lengths(CORPUS) == [len(ids) for ids in full]


def test_without_sentinels_extra_id_text_is_plain_text(spiece_dir):
    plain = transformers.T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=0)
    mine = Tokenizer(spiece_dir / "spiece.model", max_length=64)
    texts = ["x <extra_id_0> y", "a </s> b <pad>"]
    assert _rows(mine, texts) == plain(texts).input_ids


def test_the_tokenizer_json_saved_by_transformers_gives_the_same_ids(spiece_dir, hf, tmp_path):
    pytest.importorskip("tokenizers")
    fast = transformers.T5TokenizerFast.from_pretrained(str(spiece_dir), extra_ids=EXTRA)
    fast.save_pretrained(str(tmp_path))
    from_json = Tokenizer(tmp_path / "tokenizer.json", max_length=MAX_LENGTH)
    from_spiece = Tokenizer(spiece_dir / "spiece.model", max_length=MAX_LENGTH, extra_ids=EXTRA)
    assert _rows(from_json, CORPUS) == _rows(from_spiece, CORPUS)


def test_a_model_with_room_for_t5s_sentinels_reads_them(spiece_dir):
    config = ClippyConfig()          # Sentence-T5's text tower: an embedding of 32,128 rows
    room = load_tokenizer(spiece_dir / "spiece.model", config)
    assert room.extra_ids == T5_EXTRA_IDS
    (ids,) = _rows(room, ["<extra_id_0>"])
    assert ids == [room.vocab_size + T5_EXTRA_IDS - 1, room.eos_id]
    hf100 = transformers.T5Tokenizer.from_pretrained(str(spiece_dir))      # T5's default: 100
    assert _rows(room, CORPUS[:20]) == hf100(CORPUS[:20], max_length=room.max_length, truncation=True).input_ids
