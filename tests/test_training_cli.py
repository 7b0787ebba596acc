"""The training CLI as a user runs it: outputs, and one-line errors with exit code 2."""
import pytest

from conftest import run_module
from training.cli import main


@pytest.fixture(scope="module")
def checkpoint(small_names_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mlp"
    result = run_module("training", "train", "--model", "mlp", "--n-embd", "4", "--n-hidden", "32", "--steps", "200",
                        "--data", small_names_file, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "val" in result.stdout
    return out


def test_train_writes_plots(checkpoint):
    assert (checkpoint / "loss.png").stat().st_size > 1000
    assert (checkpoint / "embedding.png").stat().st_size > 1000


def test_eval_prints_three_nlls(checkpoint):
    result = run_module("training", "eval", checkpoint)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert [line.split()[0] for line in lines if line] == ["train", "val", "test"]
    assert all(1.0 < float(line.split()[1]) < 4.0 for line in lines if line)


def test_sample_prints_n_names_and_is_seeded(checkpoint):
    first = run_module("training", "sample", checkpoint, "-n", "15", "--seed", "5")
    again = run_module("training", "sample", checkpoint, "-n", "15", "--seed", "5")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 15
    assert first.stdout == again.stdout


def test_bigram_counts_train_draws_the_count_heatmap(small_names_file, tmp_path):
    result = run_module("training", "train", "--model", "bigram-counts", "--data", small_names_file,
                        "--out", tmp_path / "bc")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bc" / "bigram_counts.png").stat().st_size > 1000


def test_plot_command_redraws_a_checkpoints_figures(checkpoint):
    (checkpoint / "loss.png").unlink()
    plot = run_module("training", "plot", checkpoint)
    assert plot.returncode == 0, plot.stderr
    assert "loss.png" in plot.stdout and (checkpoint / "loss.png").is_file()


def test_existing_checkpoint_is_not_overwritten_without_asking(checkpoint):
    before = (checkpoint / "model.safetensors").read_bytes()
    result = run_module("training", "train", "--model", "mlp", "--out", checkpoint)
    assert result.returncode == 2 and "--resume or --overwrite" in result.stderr
    assert (checkpoint / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "{tmp}/missing.txt", "--out", "{tmp}/o"], "no such file"),
    (["train", "--data", "{tmp}/empty.txt", "--out", "{tmp}/o"], "empty"),
    (["train", "--data", "{tmp}/blank.txt", "--out", "{tmp}/o"], "no usable line"),
    (["train", "--data", "{tmp}/dotted.txt", "--out", "{tmp}/o"], "dotted.txt:2: character '.'"),
    (["train", "--steps", "0", "--out", "{tmp}/o"], "must be > 0"),
    (["train", "--model", "gpt5", "--out", "{tmp}/o"], "invalid choice: 'gpt5'"),
    (["train", "--model", "mlp"], "--out"),
    (["eval", "{tmp}"], "not a checkpoint folder"),
    (["eval", "{tmp}/nothing"], "not a checkpoint folder"),
    (["sample", "{tmp}/bad_json", "-n", "3"], "not valid JSON"),
    (["train", "--out", "{tmp}/o", "--resume"], "not a checkpoint folder"),
    ([], "required"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "dotted.txt").write_text("emma\nmr.smith\n")
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "checkpoint.json").write_text("{not json")
    (tmp_path / "bad_json" / "model.safetensors").write_text("")
    # In process, to spare a torch import per case; the exit code is checked end to end below.
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in args])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr


def test_bad_input_exits_2_without_traceback_in_a_real_process(tmp_path):
    result = run_module("training", "train", "--data", tmp_path / "missing.txt", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
