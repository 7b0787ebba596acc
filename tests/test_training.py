import json

import pytest

from conftest import interrupt_training, run_module
from training.checkpoint import load_checkpoint
from training.data import Dataset, load_names_file
from training.models import ModelConfig, nll
from training.train import TrainConfig, train

TINY_MLP = ["--model", "mlp", "--n-embd", "4", "--n-hidden", "32", "--batch-size", "32", "--quiet", "--no-plots"]


def _dataset(path):
    return Dataset.from_words(load_names_file(path), str(path))


def test_short_mlp_run_lowers_the_loss(small_names_file, tmp_path):
    data = _dataset(small_names_file)
    cfg = ModelConfig("mlp", data.vocab.size, n_embd=8, n_hidden=64)
    meta = train(cfg, TrainConfig(steps=300, batch_size=64, lr=3e-3, optimizer="adamw"), data, tmp_path,
                 progress=False)
    start = json.loads((tmp_path / "history.json").read_text())["train"][0][1]
    assert start > 3.0  # about log(27) at init
    assert meta["metrics"]["val_nll"] < 2.8 < start
    checkpoint = load_checkpoint(tmp_path)
    val_nll = nll(checkpoint.model, *data.contexts("val", 3))
    assert abs(val_nll - meta["metrics"]["val_nll"]) < 1e-6  # the saved weights are the ones measured


def test_bigram_neural_converges_to_the_counts_model(small_names_file, tmp_path):
    data = _dataset(small_names_file)
    counts = train(ModelConfig("bigram-counts", data.vocab.size), TrainConfig(0, 0, 0, "none"), data,
                   tmp_path / "c", progress=False)
    neural = train(ModelConfig("bigram-neural", data.vocab.size),
                   TrainConfig(steps=400, batch_size=0, lr=200, optimizer="sgd", lr_final_ratio=0.2, l2=0.001),
                   data, tmp_path / "n", progress=False)
    assert abs(neural["metrics"]["val_nll"] - counts["metrics"]["val_nll"]) < 0.02


def test_same_seed_gives_bit_identical_checkpoint(small_names_file, tmp_path):
    for run in ("a", "b", "c"):
        seed = "7" if run != "c" else "8"
        result = run_module("training", "train", *TINY_MLP, "--steps", "150", "--seed", seed,
                            "--data", small_names_file, "--out", tmp_path / run)
        assert result.returncode == 0, result.stderr
    weights = {run: (tmp_path / run / "model.safetensors").read_bytes() for run in "abc"}
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]
    meta_a, meta_b = (json.loads((tmp_path / r / "checkpoint.json").read_text()) for r in "ab")
    assert meta_a["metrics"] == meta_b["metrics"]
    assert meta_a["data"]["sha256"] == meta_b["data"]["sha256"]


def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes_bit_identical(small_names_file, tmp_path):
    # With dropout, so resuming must also restore the global generator dropout draws from.
    args = [*TINY_MLP, "--steps", "2500", "--eval-every", "100", "--diagnostics-every", "50", "--seed", "3",
            "--dropout", "0.1", "--data", small_names_file]
    straight = run_module("training", "train", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "interrupted"
    stderr = interrupt_training(args, out)
    assert "--resume" in stderr
    meta = json.loads((out / "checkpoint.json").read_text())
    assert 0 < meta["training"]["completed_steps"] < 2500 and not meta["training"]["finished"]
    interrupted = load_checkpoint(out)  # the interrupted checkpoint is a usable one
    # Saved mid-training, it records the val NLL of the weights it holds, and only that: export measures the rest.
    val = nll(interrupted.model.eval(), *interrupted.dataset().contexts("val", interrupted.block_size))
    assert list(meta["metrics"]) == ["val_nll"] and meta["metrics"]["val_nll"] == pytest.approx(val, abs=1e-6)
    exported = run_module("export", out, "--registry", tmp_path / "registry", "--name", "early")
    assert exported.returncode == 0 and "training did not finish" in exported.stderr, exported.stderr
    manifest = json.loads(next((tmp_path / "registry" / "early").glob("*/manifest.json")).read_text())
    assert set(manifest["metrics"]) == {"train_nll", "val_nll", "test_nll"}
    assert manifest["metrics"]["val_nll"] == pytest.approx(val, abs=1e-6)

    resumed = run_module("training", "train", "--out", out, "--resume", "--quiet", "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert json.loads((out / "checkpoint.json").read_text())["training"]["finished"]
    for name in ("history.json", "diagnostics.json"):  # each step's entries once, as in the straight run
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "straight" / name).read_text()), name


def test_checkpoint_records_what_export_and_eval_need(small_names_file, tmp_path):
    result = run_module("training", "train", *TINY_MLP, "--steps", "50", "--data", small_names_file,
                        "--out", tmp_path / "ck")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert meta["vocab"][0] == "." and meta["block_size"] == 3 and meta["split"]["seed"] == 42
    assert len(meta["data"]["sha256"]) == 64
    assert set(meta["metrics"]) == {"train_nll", "val_nll", "test_nll"}
    assert meta["training"]["wall_time_s"] > 0
    assert meta["model_config"]["n_hidden"] == 32
    assert load_checkpoint(tmp_path / "ck").model.embedding.weight.shape == (len(meta["vocab"]), 4)
