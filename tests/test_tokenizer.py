import json
import re
import shutil

import pytest
import sentencepiece
import torch

from clippy_rt.errors import CheckpointError, ConfigError, InputError, ModelDirError
from clippy_rt.tokenizer import Tokenizer, builtin_corpus, find_tokenizer_file, train_sentencepiece

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
               "potted plant", "sheep", "sofa", "train", "tv monitor"]

# Ordinary prompts plus what normalisation and unknown characters make interesting.
TEXTS = [
    "a photo of a dog",
    "a photo of an aeroplane.",
    "A Photo Of A Potted Plant",
    "Hello   World!!  ",
    "  leading and trailing spaces  ",
    "tab\tand\nnewline",
    "ÀÉ ünïcödé ½ ﬁ ｆｕｌｌｗｉｄｔｈ",
    "emoji 🐶 and 漢字",
    "Zürich 123 #$%^ (brackets) [x]",
    "",
    "a photo of a tv monitor, a sofa and a chair in the living room at night",
]


@pytest.fixture(scope="module")
def spiece_path(tmp_path_factory):
    return train_sentencepiece(builtin_corpus(), tmp_path_factory.mktemp("spm") / "spiece.model", 512)


@pytest.fixture(scope="module")
def bpe_json_path(tmp_path_factory):
    """A tokenizer.json trained here with `tokenizers`, in T5 id layout, whose own padding,
    truncation and EOS post-processor must all be ignored by Tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    hf.train_from_iterator(builtin_corpus(), trainer)
    hf.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    hf.enable_padding(pad_id=0, pad_token="<pad>", length=50)
    hf.enable_truncation(max_length=3)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    hf.save(str(path))
    return path


def _reference_tokenizers_ids(path, text):
    """Ids from the file's own pipeline (its post-processor appends </s>), with its padding
    and truncation switched off."""
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(str(path))
    hf.no_padding()
    hf.no_truncation()
    return hf.encode(text).ids


# --- training -------------------------------------------------------------------------


def test_trained_model_has_t5_layout_and_exact_size(spiece_path):
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_path))
    assert processor.get_piece_size() == 512
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    # Every character of the corpus is a piece: ordinary prompts never fall back to <unk>.
    for text in ["A photo of Zoe's dog, 42 (really?)!", "Quentin; Xavier: \"yes\" - no."]:
        assert 2 not in processor.encode(text)


def test_training_is_deterministic_and_quiet(tmp_path, capfd, spiece_path):
    first = train_sentencepiece(builtin_corpus(), tmp_path / "a.model", 512, seed=0)
    second = train_sentencepiece(iter(builtin_corpus()), tmp_path / "b.model", 512, seed=0)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert first.read_bytes() == second.read_bytes() == spiece_path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model"]


def test_vocab_larger_than_corpus_supports(tmp_path):
    with pytest.raises(InputError, match=r"supports at most \d+ unigram pieces") as info:
        train_sentencepiece(builtin_corpus(), tmp_path / "exact.model", 100_000, exact=True)
    supported = int(re.search(r"at most (\d+)", str(info.value)).group(1))
    assert 512 < supported < 100_000
    assert not (tmp_path / "exact.model").exists()

    path = train_sentencepiece(builtin_corpus(), tmp_path / "big.model", 100_000)
    tok = Tokenizer.from_file(path, max_length=16)
    assert tok.vocab_size == supported


def test_bpe_model_type(tmp_path):
    path = train_sentencepiece(builtin_corpus(), tmp_path / "bpe.model", 2000, model_type="bpe")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert processor.get_piece_size() == 2000
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)


@pytest.mark.parametrize("lines, vocab_size, model_type, error", [
    ([], 64, "unigram", InputError),
    (["", "   "], 64, "unigram", InputError),
    (["fine", 3], 64, "unigram", TypeError),
    ("a single string", 64, "unigram", TypeError),
    (["a b c"], 3, "unigram", InputError),
    (["a b c"], 64, "word", InputError),
])
def test_training_rejects_bad_arguments(tmp_path, lines, vocab_size, model_type, error):
    with pytest.raises(error):
        train_sentencepiece(lines, tmp_path / "x.model", vocab_size, model_type=model_type)
    assert list(tmp_path.iterdir()) == []


def test_builtin_corpus_has_voc_prompts():
    corpus = builtin_corpus()
    assert len(corpus) >= 300
    lowered = {line.lower().rstrip(".") for line in corpus}
    for name in VOC_CLASSES:
        article = "an" if name[0] in "aeiou" else "a"
        assert f"a photo of {article} {name}" in lowered, name


# --- encoding ---------------------------------------------------------------------------


def test_spiece_matches_transformers_t5_tokenizer(spiece_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "t5"
    model_dir.mkdir()
    shutil.copy(spiece_path, model_dir / "spiece.model")
    reference = transformers.T5Tokenizer.from_pretrained(str(model_dir), extra_ids=0)
    tok = Tokenizer.from_file(spiece_path, max_length=256)
    assert tok.vocab_size == len(reference)

    input_ids, attention_mask = tok.encode(TEXTS)
    expected = reference(TEXTS, padding=True, return_tensors="pt")
    torch.testing.assert_close(input_ids, expected["input_ids"].to(torch.int64))
    torch.testing.assert_close(attention_mask, expected["attention_mask"].to(torch.int64))

    short = Tokenizer.from_file(spiece_path, max_length=6)
    input_ids, attention_mask = short.encode(TEXTS)
    expected = reference(TEXTS, padding=True, truncation=True, max_length=6, return_tensors="pt")
    torch.testing.assert_close(input_ids, expected["input_ids"].to(torch.int64))
    torch.testing.assert_close(attention_mask, expected["attention_mask"].to(torch.int64))


def test_converted_tokenizer_json_matches_spiece(spiece_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "t5"
    model_dir.mkdir()
    shutil.copy(spiece_path, model_dir / "spiece.model")
    converted = transformers.T5Tokenizer.from_pretrained(str(model_dir), extra_ids=0)
    json_path = tmp_path / "tokenizer.json"
    converted.backend_tokenizer.save(str(json_path))

    from_json = Tokenizer.from_file(json_path, max_length=12)
    from_spiece = Tokenizer.from_file(spiece_path, max_length=12)
    assert from_json.kind == "tokenizer.json" and from_spiece.kind == "sentencepiece"
    assert from_json.vocab_size == from_spiece.vocab_size
    for got, expected in zip(from_json.encode(TEXTS), from_spiece.encode(TEXTS)):
        torch.testing.assert_close(got, expected)


def test_tokenizer_json_ignores_its_own_specials_padding_and_truncation(bpe_json_path):
    tok = Tokenizer.from_file(bpe_json_path, max_length=64)
    texts = ["a photo of a dog", "a bright red tractor stops by the tent at sunset", ""]
    input_ids, attention_mask = tok.encode(texts)
    for k, text in enumerate(texts):
        expected = _reference_tokenizers_ids(bpe_json_path, text)
        n = len(expected)
        assert input_ids[k, :n].tolist() == expected
        assert attention_mask[k].sum().item() == n
        assert (input_ids[k, n:] == 0).all() and (attention_mask[k, n:] == 0).all()
    assert input_ids.shape[1] == max(len(_reference_tokenizers_ids(bpe_json_path, t)) for t in texts)


@pytest.mark.parametrize("kind", ["spiece", "json"])
def test_padding_truncation_and_eos(kind, spiece_path, bpe_json_path):
    path = spiece_path if kind == "spiece" else bpe_json_path
    long_text = " ".join(["a photo of a small red bicycle next to a wooden bench"] * 4)
    texts = ["dog", "a photo of a cat on a sofa", long_text]
    full = Tokenizer.from_file(path, max_length=1000)
    full_ids, full_mask = full.encode(texts)
    lengths = full.tokenize_lengths(texts)
    assert full_mask.sum(dim=1).tolist() == lengths
    assert full_ids.shape == (3, max(lengths))

    max_length = 7
    assert lengths[2] > max_length and lengths[0] < max_length
    tok = Tokenizer.from_file(path, max_length=max_length)
    input_ids, attention_mask = tok.encode(texts)
    assert input_ids.dtype == torch.int64 and attention_mask.dtype == torch.int64
    assert input_ids.shape == attention_mask.shape == (3, max_length)
    assert tok.tokenize_lengths(texts) == lengths
    for k, length in enumerate(lengths):
        kept = min(length, max_length)
        assert attention_mask[k].tolist() == [1] * kept + [0] * (max_length - kept)
        assert input_ids[k, kept - 1].item() == 1
        assert (input_ids[k, :kept - 1] != 1).all()
        assert input_ids[k, :kept - 1].tolist() == full_ids[k, :kept - 1].tolist()
        assert (input_ids[k, kept:] == 0).all()

    # A batch of short texts pads only to its own longest member.
    short_ids, _ = tok.encode(["dog", "cat"])
    assert short_ids.shape[1] == max(lengths[0], tok.tokenize_lengths(["cat"])[0])


def test_directory_lookup(spiece_path, bpe_json_path, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(spiece_path, both / "spiece.model")
    shutil.copy(bpe_json_path, both / "tokenizer.json")
    assert Tokenizer.from_file(both, max_length=8).kind == "sentencepiece"
    only_json = tmp_path / "json"
    only_json.mkdir()
    shutil.copy(bpe_json_path, only_json / "tokenizer.json")
    assert Tokenizer.from_file(only_json, max_length=8).path == only_json / "tokenizer.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_tokenizer_file(empty) is None
    with pytest.raises(ModelDirError, match="spiece.model"):
        Tokenizer.from_file(empty, max_length=8)


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "spiece.model"
    with pytest.raises(CheckpointError, match="not found") as info:
        Tokenizer.from_file(missing, max_length=8)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("name, content, message", [
    ("spiece.model", b"\x00this is not a protobuf" * 8, "not a valid SentencePiece model"),
    ("spiece.model", b"", "not a valid SentencePiece model"),
    ("tokenizer.json", b"{not json", "not a valid tokenizer JSON"),
    ("tokenizer.json", b"[1, 2, 3]", "not a valid tokenizer JSON"),
    ("tokenizer.json", b'{"model": {"type": "Nonsense"}}', "not a valid tokenizer JSON"),
    ("tokenizer.json", b"\xff\xfe\x00\x01", "not a valid tokenizer JSON"),
])
def test_corrupt_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        Tokenizer.from_file(path, max_length=8)
    assert str(path) in str(info.value)
    # No library traceback chained under the message.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_truncated_spiece_file(tmp_path, spiece_path):
    path = tmp_path / "spiece.model"
    path.write_bytes(spiece_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a valid SentencePiece model"):
        Tokenizer.from_file(path, max_length=8)


def test_ids_must_agree_with_the_file(spiece_path, bpe_json_path, tmp_path):
    with pytest.raises(CheckpointError, match="eos id 1"):
        Tokenizer.from_file(spiece_path, max_length=8, eos_id=3)
    with pytest.raises(CheckpointError, match="pad id 0"):
        Tokenizer.from_file(bpe_json_path, max_length=8, pad_id=5)

    data = json.loads(bpe_json_path.read_text())
    data["padding"]["pad_id"] = 7
    swapped = tmp_path / "tokenizer.json"
    swapped.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="declares pad id 7"):
        Tokenizer.from_file(swapped, max_length=8)

    no_eos = _json_without_specials(tmp_path, bpe_json_path)
    assert Tokenizer.from_file(no_eos, max_length=8).eos_id == 1
    with pytest.raises(CheckpointError, match="outside the vocabulary"):
        Tokenizer.from_file(no_eos, max_length=8, eos_id=100_000)


def _json_without_specials(tmp_path, bpe_json_path):
    """The BPE tokenizer.json with </s> renamed, so the file declares no EOS."""
    data = json.loads(bpe_json_path.read_text())
    data["post_processor"] = None
    for token in data["added_tokens"]:
        if token["content"] == "</s>":
            token["content"] = "<end>"
    vocab = data["model"]["vocab"]
    vocab["<end>"] = vocab.pop("</s>")
    path = tmp_path / "no_eos" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kwargs", [
    {"max_length": 1}, {"max_length": True}, {"max_length": 8, "pad_id": -1},
    {"max_length": 8, "pad_id": 1, "eos_id": 1},
])
def test_bad_arguments(spiece_path, kwargs):
    with pytest.raises(ConfigError):
        Tokenizer.from_file(spiece_path, **kwargs)


def test_bad_texts(spiece_path):
    tok = Tokenizer.from_file(spiece_path, max_length=8)
    with pytest.raises(InputError, match="empty"):
        tok.encode([])
    with pytest.raises(TypeError, match="single str"):
        tok.encode("a photo of a dog")
    with pytest.raises(TypeError, match="item 1"):
        tok.encode(["a dog", 3])
