import random

import pytest
import torch

from training.data import (BOUNDARY, DataError, Dataset, Vocab, build_contexts, load_names_file, load_ssa_names,
                           parse_names, split_words)


def test_vocab_puts_boundary_first_then_sorted_characters():
    vocab = Vocab.from_words(["bob", "ada", "zoe"])
    assert vocab.chars == (".", "a", "b", "d", "e", "o", "z")
    assert vocab.encode("zoe") == [6, 5, 4]
    assert vocab.decode([6, 5, 4]) == "zoe"


def test_blank_lines_and_surrounding_whitespace_are_ignored():
    assert parse_names("  emma \n\n\t\nolivia\r\n   \nmary ann\n") == ["emma", "olivia", "mary ann"]


@pytest.mark.parametrize("text, line, char", [("emma\njo.hn\n", 2, "."), ("a\n\nb\tc\n", 3, "\t")])
def test_unusable_line_is_an_error_naming_line_and_character(text, line, char):
    with pytest.raises(DataError) as err:
        parse_names(text, source="list.txt")
    assert f"list.txt:{line}:" in str(err.value)
    assert repr(char) in str(err.value)


def test_files_without_usable_lines_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "binary.txt").write_bytes(b"emma\n\xff\xfe\n")
    for name, reason in [("empty.txt", "empty"), ("blank.txt", "no usable line"), ("binary.txt", "UTF-8"),
                         ("missing.txt", "no such file")]:
        with pytest.raises(DataError, match=reason):
            load_names_file(tmp_path / name)


def test_split_is_the_lectures_shuffle_and_80_10_10():
    words = [f"w{i}" for i in range(1000)]
    expected = list(words)
    random.seed(42)
    random.shuffle(expected)
    split = split_words(words)
    assert split.train == expected[:800] and split.val == expected[800:900] and split.test == expected[900:]
    assert words == [f"w{i}" for i in range(1000)]  # the caller's list is not shuffled in place


def test_split_of_makemore_names_reproduces_lecture_sizes(shared_names):
    words = load_names_file(shared_names)
    assert len(words) == 32033
    assert split_words(words).sizes() == {"train": 25626, "val": 3203, "test": 3204}
    X, _ = build_contexts(split_words(words).train, Vocab.from_words(words), 3)
    assert X.shape == (182625, 3)  # lecture 2's Xtr.shape


def test_contexts_are_padded_with_boundary_and_end_with_end_token():
    vocab = Vocab.from_words(["ab"])
    X, Y = build_contexts(["ab"], vocab, block_size=3)
    assert X.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2]]
    assert Y.tolist() == [1, 2, 0]
    assert X.dtype == Y.dtype == torch.long


def test_default_dataset_is_ssa_2017_like_makemore(ssa_words):
    assert 30_000 < len(ssa_words) < 35_000
    assert ssa_words[:3] == ["emma", "olivia", "ava"]  # girls first, by count, as in names.txt
    assert all(w == w.lower() and BOUNDARY not in w for w in ssa_words)
    assert "liam" in ssa_words[len(ssa_words) // 2:]  # the boys follow


def test_year_outside_the_data_is_an_error():
    with pytest.raises(DataError, match="covers 1880-2017"):
        load_ssa_names(2030)


def test_dataset_with_a_vocabulary_rejects_unknown_characters():
    vocab = Vocab.from_words(["abc"])
    with pytest.raises(DataError, match="not in the model's vocabulary"):
        Dataset.from_words(["abcz"] * 20, "x", vocab)
