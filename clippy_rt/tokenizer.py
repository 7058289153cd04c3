"""Text tokenisation with T5 conventions, from a SentencePiece model or a ``tokenizer.json``.

T5 layout: pad 0, EOS 1, unk 2, no BOS. Every text becomes its pieces followed by one EOS;
a batch is right-padded with the pad id to its longest member, and a text longer than
``max_length`` tokens is cut so that EOS is still its last real token:

    ids(text) = pieces(text)[: max_length - 1] + [eos_id]

Special-token text inside a prompt (``</s>``, ``<pad>``, ``<unk>``, and ``<extra_id_N>``
where the model has T5's 100 sentinels) is read as that token, and the text around it is
encoded on its own, as the Hugging Face T5 tokenizer of the same ``spiece.model`` does; a
``tokenizer.json`` carries its special tokens itself. EOS is appended here for both file
kinds (the file's own post-processing is switched off), so a ``spiece.model`` and the
``tokenizer.json`` converted from it give the same ids.

``train_sentencepiece`` builds a small vocabulary in the same layout for random models and
for training runs; ``builtin_corpus()`` is the English text shipped for that purpose.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .errors import CheckpointError, ConfigError, InputError, ModelDirError

PathLike = Union[str, Path]

SPIECE_NAME = "spiece.model"
TOKENIZER_JSON_NAME = "tokenizer.json"
# When a directory holds both, the SentencePiece model wins: it is the original file of
# the T5 family and the other is converted from it.
TOKENIZER_FILE_NAMES = (SPIECE_NAME, TOKENIZER_JSON_NAME)

# T5's special tokens as they may appear inside a text, and its sentinel count.
PAD_TEXT, EOS_TEXT, UNK_TEXT = "<pad>", "</s>", "<unk>"
T5_EXTRA_IDS = 100

KIND_SENTENCEPIECE = "sentencepiece"
KIND_TOKENIZER_JSON = "tokenizer.json"

_CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"


class Tokenizer:
    """A T5-style tokenizer over a ``spiece.model`` or a Hugging Face ``tokenizer.json``.

    ``path`` is the file, or a directory holding ``spiece.model`` or ``tokenizer.json``.
    The file kind follows the name: ``*.json`` is a Hugging Face tokenizer, anything else a
    SentencePiece model. ``pad_id``/``eos_id``/``unk_id`` are the ids the model was trained
    with; where the file declares its own (SentencePiece trainer ids; ``<pad>``, ``</s>``,
    ``<unk>`` tokens, a padding section or a model ``unk_id`` in JSON) they must agree.

    Raises ``CheckpointError`` for a missing, corrupt or disagreeing file, ``ModelDirError``
    for a directory with no tokenizer file, ``ConfigError`` for a bad ``max_length`` or id.
    """

    def __init__(self, path: PathLike, *, max_length: int, pad_id: int = 0, eos_id: int = 1,
                 unk_id: int = 2, extra_ids: int = 0) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ConfigError(f"tokenizer max_length must be an integer >= 2 (room for EOS), "
                              f"got {max_length!r}")
        for name, value in (("pad_id", pad_id), ("eos_id", eos_id), ("unk_id", unk_id)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"tokenizer {name} must be a non-negative integer, got {value!r}")
        if pad_id == eos_id:
            raise ConfigError(f"tokenizer pad_id and eos_id must differ, both are {pad_id}")

        self.path = _resolve_tokenizer_path(Path(path))
        self.max_length = max_length
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.unk_id = unk_id
        if self.path.suffix.lower() == ".json":
            self.kind = KIND_TOKENIZER_JSON
            self._backend, declared, self.vocab_size = _load_tokenizer_json(self.path)
        else:
            self.kind = KIND_SENTENCEPIECE
            self._backend, declared, self.vocab_size = _load_sentencepiece(self.path)
        self._check_ids(declared)
        self.set_extra_ids(extra_ids)

    def set_extra_ids(self, extra_ids: int) -> None:
        """Read ``<extra_id_0>`` ... ``<extra_id_{extra_ids-1}>`` in a text as T5's sentinel
        tokens, ids ``vocab_size + extra_ids - 1 - N`` (SentencePiece files only: a
        tokenizer.json lists its own)."""
        if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or extra_ids < 0:
            raise ConfigError(f"tokenizer extra_ids must be a non-negative integer, got {extra_ids!r}")
        self.extra_ids = extra_ids if self.kind == KIND_SENTENCEPIECE else 0
        # The special tokens a T5 tokenizer reads as themselves inside a text.
        self._specials = {PAD_TEXT: self.pad_id, EOS_TEXT: self.eos_id, UNK_TEXT: self.unk_id}
        self._specials.update({f"<extra_id_{i}>": self.vocab_size + self.extra_ids - 1 - i
                               for i in range(self.extra_ids)})
        self._special_pattern = re.compile("|".join(re.escape(t) for t in sorted(self._specials, key=len,
                                                                                   reverse=True)))

    @classmethod
    def from_file(cls, path: PathLike, *, max_length: int, pad_id: int = 0, eos_id: int = 1,
                  unk_id: int = 2, extra_ids: int = 0) -> "Tokenizer":
        """Load ``path`` (a file, or a directory with ``spiece.model`` / ``tokenizer.json``)."""
        return cls(path, max_length=max_length, pad_id=pad_id, eos_id=eos_id, unk_id=unk_id, extra_ids=extra_ids)

    def __repr__(self) -> str:
        return (f"Tokenizer({str(self.path)!r}, kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length})")

    def _check_ids(self, declared: Dict[str, List[int]]) -> None:
        expected = {"pad": self.pad_id, "eos": self.eos_id, "unk": self.unk_id}
        for role, ids in declared.items():
            for file_id in ids:
                if file_id != expected[role]:
                    raise CheckpointError(
                        f"tokenizer {self.path} declares {role} id {file_id}, but the model "
                        f"expects {role} id {expected[role]}")
        for role, value in expected.items():
            if value >= self.vocab_size:
                raise CheckpointError(
                    f"{role} id {value} is outside the vocabulary of {self.path} "
                    f"({self.vocab_size} pieces)")

    def _pieces(self, texts: Sequence[str]) -> List[List[int]]:
        texts = _check_texts(texts)
        if self.kind == KIND_SENTENCEPIECE:
            return [self._sentencepiece_ids(text) for text in texts]
        return [list(enc.ids) for enc in self._backend.encode_batch(texts, add_special_tokens=False)]

    def _sentencepiece_ids(self, text: str) -> List[int]:
        """As the Hugging Face T5 tokenizer of the same ``spiece.model``: special-token text
        (``</s>``, ``<pad>``, ``<unk>``, ``<extra_id_N>``) is that token; the text between
        them is encoded piece by piece on its own (empty or blank text adds nothing)."""
        ids: List[int] = []
        start = 0
        for match in self._special_pattern.finditer(text):
            ids += self._backend.encode(text[start:match.start()], out_type=int)
            ids.append(self._specials[match.group()])
            start = match.end()
        ids += self._backend.encode(text[start:], out_type=int)
        return ids

    def tokenize_lengths(self, texts: Sequence[str]) -> List[int]:
        """Token count of each text including its EOS, before truncation to ``max_length``.

        A value above ``max_length`` means ``encode`` cuts that text.
        """
        return [len(ids) + 1 for ids in self._pieces(texts)]

    def encode(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of a batch of texts.

        Returns ``(input_ids, attention_mask)``, both int64 ``[K, L]`` with K = len(texts)
        and L = the longest encoded text (at most ``max_length``). Row k holds
        ``pieces[: max_length - 1] + [eos_id]`` then ``pad_id``; the mask is 1 on those real
        tokens (EOS included) and 0 on padding.
        """
        rows = [ids[: self.max_length - 1] + [self.eos_id] for ids in self._pieces(texts)]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.int64)
        for k, row in enumerate(rows):
            input_ids[k, : len(row)] = torch.tensor(row, dtype=torch.int64)
            attention_mask[k, : len(row)] = 1
        return input_ids, attention_mask


def find_tokenizer_file(directory: PathLike) -> Optional[Path]:
    """The tokenizer file of a model directory (``spiece.model`` first), or None."""
    directory = Path(directory)
    for name in TOKENIZER_FILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _resolve_tokenizer_path(path: Path) -> Path:
    if path.is_dir():
        found = find_tokenizer_file(path)
        if found is None:
            raise ModelDirError(f"no tokenizer in {path}: expected {' or '.join(TOKENIZER_FILE_NAMES)}")
        return found
    if not path.exists():
        raise CheckpointError(f"tokenizer file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"tokenizer path is not a regular file: {path}")
    return path


def _check_texts(texts: Sequence[str]) -> List[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"expected a list of strings, got a single {type(texts).__name__}; "
                        f"wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"expected a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise InputError("expected at least one text, got an empty list")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"expected a list of strings, item {index} is {type(text).__name__}")
    return texts


def _load_sentencepiece(path: Path) -> Tuple[Any, Dict[str, List[int]], int]:
    import sentencepiece

    # Read the bytes here so a missing or unreadable file is reported as such, and parse
    # from memory: the library's own errors are C++ status strings.
    try:
        proto = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read tokenizer file {path}: {exc.strerror or exc}") from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid SentencePiece model ({_first_line(exc)})") from None
    size = processor.get_piece_size()
    if size <= 0:
        raise CheckpointError(f"{path} is not a valid SentencePiece model (no pieces)")
    # The trainer's ids are -1 where a role is switched off (T5 has no BOS).
    declared = {role: [value] for role, value in (("pad", processor.pad_id()),
                                                  ("eos", processor.eos_id()),
                                                  ("unk", processor.unk_id())) if value >= 0}
    return processor, declared, size


def _load_tokenizer_json(path: Path) -> Tuple[Any, Dict[str, List[int]], int]:
    import tokenizers

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot read tokenizer file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a valid tokenizer JSON (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not a valid tokenizer JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path} is not a valid tokenizer JSON (no 'model' section)")
    try:
        backend = tokenizers.Tokenizer.from_str(text)
    except Exception as exc:  # the Rust bindings raise a bare Exception
        raise CheckpointError(f"{path} is not a valid tokenizer JSON ({_first_line(exc)})") from None
    # The file's own padding/truncation would change lengths behind encode()'s back.
    backend.no_padding()
    backend.no_truncation()

    declared: Dict[str, List[int]] = {"pad": [], "eos": [], "unk": []}
    for role, token in (("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>")):
        token_id = backend.token_to_id(token)
        if token_id is not None:
            declared[role].append(token_id)
    padding = data.get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        declared["pad"].append(padding["pad_id"])
    model = data["model"]
    if isinstance(model.get("unk_id"), int):
        declared["unk"].append(model["unk_id"])
    elif isinstance(model.get("unk_token"), str):
        token_id = backend.token_to_id(model["unk_token"])
        if token_id is not None:
            declared["unk"].append(token_id)
    return backend, declared, backend.get_vocab_size(with_added_tokens=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def builtin_corpus() -> List[str]:
    """The English corpus shipped with the package (one caption or prompt per line)."""
    return [line for line in _CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


# SentencePiece's message when the corpus cannot fill the vocabulary; it names the maximum.
_TOO_HIGH = re.compile(r"Vocabulary size (?:is )?too high.*?<= ?(\d+)")


def train_sentencepiece(lines: Iterable[str], out_path: PathLike, vocab_size: int, *, seed: int = 0,
                        model_type: str = "unigram", exact: bool = False) -> Path:
    """Train a SentencePiece model in the T5 layout and write it to ``out_path``.

    Pieces: pad 0, EOS 1, unk 2, no BOS, then the learned pieces; NFKC normalisation, every
    character of the corpus kept (``character_coverage=1.0``). Training is single-threaded
    and reads the lines in order, so the same lines, size and seed give the same file.
    ``seed`` is SentencePiece's process-wide random seed.

    A small corpus supports only so many pieces (a unigram model keeps a piece only if the
    corpus uses it). When ``vocab_size`` is more than ``lines`` supports, the model gets the
    largest size they do support, or, with ``exact=True``, ``InputError`` names that size.
    The file is written atomically. Returns ``out_path``.
    """
    import sentencepiece

    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 4:
        raise InputError(f"vocab_size must be an integer >= 4 (3 special pieces and one more), "
                         f"got {vocab_size!r}")
    if model_type not in ("unigram", "bpe"):
        raise InputError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if isinstance(lines, (str, bytes)):
        raise TypeError("lines must be an iterable of strings, got a single string")
    sentences: List[str] = []
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"lines must be strings, line {index} is {type(line).__name__}")
        sentences.extend(part for part in line.splitlines() if part.strip())
    if not sentences:
        raise InputError("cannot train a tokenizer on an empty corpus")

    sentencepiece.set_random_generator_seed(seed)
    options = dict(model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                   character_coverage=1.0, num_threads=1, minloglevel=2,
                   shuffle_input_sentence=False)

    def train(size: int, **extra: Any) -> bytes:
        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences),
                                                 model_writer=buffer, vocab_size=size,
                                                 **options, **extra)
        return buffer.getvalue()

    try:
        try:
            proto = train(vocab_size)
        except RuntimeError as exc:
            match = _TOO_HIGH.search(str(exc))
            if match is None:
                raise
            supported = int(match.group(1))
            if exact:
                raise InputError(f"the corpus ({len(sentences)} lines) supports at most "
                                 f"{supported} {model_type} pieces, {vocab_size} were asked for") from None
            proto = train(supported)
    except RuntimeError as exc:
        raise InputError(f"SentencePiece training failed: {_first_line(exc)}") from None

    from .formats.atomic import atomic_write

    out_path = Path(out_path)
    atomic_write(out_path, lambda handle: handle.write(proto))
    return out_path


def load_tokenizer(tokenizer_path: Path, config):
    """The tokenizer for ``config``'s text tower, checked against its vocabulary."""
    text = config.text
    tokenizer = Tokenizer.from_file(tokenizer_path, max_length=text.max_length, pad_id=text.pad_id,
                                    eos_id=text.eos_id, unk_id=text.unk_id)
    if tokenizer.kind == KIND_SENTENCEPIECE and text.vocab_size - tokenizer.vocab_size >= T5_EXTRA_IDS:
        # T5's tokenizer adds 100 sentinel tokens after the pieces (Sentence-T5: 32,000 pieces,
        # an embedding of 32,128 rows); a smaller embedding has no room for them.
        tokenizer.set_extra_ids(T5_EXTRA_IDS)
    if tokenizer.vocab_size > text.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} pieces but the text "
                          f"tower's embedding holds {text.vocab_size}")
    return tokenizer
