"""Fine-tuning (training/finetune.py): from a checkpoint's weights, with or without explain's loss."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import interrupt_training, run_module
from training.checkpoint import load_checkpoint
from training.conditions import fast_contexts
from training.finetune import Finetune, FinetuneConfig
from training.train import TrainConfig, train


def explain_cross_entropy(model, data, records: list[int], prior: dict) -> float:
    """Mean -log p(sex | name, decade) of training records, one name at a time: log p(name | sex, decade) from
    the model's rows for that name, plus log p(sex, decade) from the prior."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for r in records:
            name, (sex, decade) = data.split.train[r], data.label_split["train"][r]
            X, Y = fast_contexts([name], data.vocab, model.cfg.block_size)
            joint = []
            for s in ("F", "M"):
                condition = data.conditions.indices([(s, decade)], "test")
                logp = -F.cross_entropy(model(torch.cat([X, condition.expand(len(X), -1)], 1)), Y, reduction="sum")
                joint.append(logp.item() + math.log(prior[s, decade]) if (s, decade) in prior else -math.inf)
            total -= joint[("F", "M").index(sex)] - torch.logsumexp(torch.tensor(joint), 0).item()
    return total / len(records)


def test_explain_loss_is_the_posterior_cross_entropy_of_the_records_drawn(conditional_checkpoint):
    checkpoint = load_checkpoint(conditional_checkpoint)
    data, prior = checkpoint.dataset(), checkpoint.meta["condition_prior"]
    objective = Finetune(data, checkpoint.block_size, FinetuneConfig("x", data.sha256, "sex", 0.7, 16), prior)
    model = checkpoint.model.eval()  # BatchNorm's running statistics: the same rows give the same answer alone
    with torch.no_grad():
        got = objective.extra_loss(model, torch.Generator().manual_seed(5)).item()
    records = torch.randint(0, len(data.split.train), (16,), generator=torch.Generator().manual_seed(5)).tolist()
    by_values = {tuple(e["values"]): e["p"] for e in prior}
    assert got == pytest.approx(0.7 * explain_cross_entropy(model, data, records, by_values), rel=1e-5)
    assert Finetune(data, checkpoint.block_size, FinetuneConfig("x", data.sha256), prior).extra_loss(
        model, torch.Generator()) is None


def test_explain_loss_sharpens_the_posterior_that_likelihood_alone_leaves(tmp_path, conditional_checkpoint):
    checkpoint = load_checkpoint(conditional_checkpoint)
    data, prior = checkpoint.dataset(), checkpoint.meta["condition_prior"]
    by_values = {tuple(e["values"]): e["p"] for e in prior}
    records = list(range(0, len(data.split.train), max(1, len(data.split.train) // 300)))
    tc = TrainConfig(steps=600, batch_size=64, lr=1e-3, optimizer="adamw", seed=2, eval_every=600)
    scores = {}
    for label, explain in (("likelihood only", None), ("with explain's loss", "sex")):
        cfg = FinetuneConfig(str(conditional_checkpoint), data.sha256, explain, 2.0, 32)
        out = tmp_path / f"finetuned-{explain}"
        train(checkpoint.config, tc, data, out, progress=False, objective=Finetune(data, checkpoint.block_size, cfg, prior),
              init_state=checkpoint.model.state_dict())
        scores[label] = explain_cross_entropy(load_checkpoint(out).model, data, records, by_values)
    before = explain_cross_entropy(checkpoint.model, data, records, by_values)
    assert scores["with explain's loss"] < min(before, scores["likelihood only"]) - 0.03, (before, scores)


def test_finetune_starts_from_the_checkpoint_and_resumes_to_the_same_model(tmp_path, conditional_checkpoint):
    base = json.loads((conditional_checkpoint / "checkpoint.json").read_text())
    near = run_module("training", "finetune", conditional_checkpoint, "--steps", "1", "--lr", "1e-9", "--quiet",
                      "--no-plots", "--out", tmp_path / "near")
    assert near.returncode == 0 and "fine-tuned from" in near.stdout, near.stderr
    meta = json.loads((tmp_path / "near" / "checkpoint.json").read_text())
    assert meta["metrics"]["val_nll"] == pytest.approx(base["metrics"]["val_nll"], abs=2e-3)  # not a fresh model
    assert meta["training"]["finetune"]["explain"] is None and meta["training"]["weight_decay"] == 0

    args = [conditional_checkpoint, "--explain", "sex", "--steps", "1500", "--lr", "3e-4", "--quiet", "--no-plots"]
    straight = run_module("training", "finetune", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    saved = json.loads((tmp_path / "straight" / "checkpoint.json").read_text())["training"]
    assert saved["finetune"]["explain"] == "sex" and saved["finetune"]["init_sha256"] == base["data"]["sha256"]
    # Ten evaluations and checkpoints over the fine-tuning itself, not the interval of the training it starts from.
    assert base["training"]["eval_every"] == 500
    assert len(json.loads((tmp_path / "straight" / "history.json").read_text())["val"]) == 10
    out = tmp_path / "interrupted"
    stderr = interrupt_training(args, out, command="finetune")
    assert f"finetune {conditional_checkpoint} --out {out} --resume" in stderr
    assert 0 < json.loads((out / "checkpoint.json").read_text())["training"]["completed_steps"] < 1500
    resumed = run_module("training", "finetune", conditional_checkpoint, "--out", out, "--resume", "--quiet",
                         "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    # Bit for bit: three processes (straight, interrupted, resumed), each of which settles oneMKL's dispatch
    # before its first threaded op (training/vector_math.py).
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    metrics = [json.loads((path / "checkpoint.json").read_text())["metrics"] for path in (out, tmp_path / "straight")]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("extra, reason", [
    (["--explain", "colour"], "--explain colour: not a condition of the model (its conditions: sex, decade)"),
    (["--explain-weight", "0"], "--explain-weight"),
    (["--resume"], "not a checkpoint folder"),
])
def test_finetune_refuses_bad_input_in_one_line(tmp_path, conditional_checkpoint, extra, reason):
    result = run_module("training", "finetune", conditional_checkpoint, "--out", tmp_path / "o", *extra)
    assert result.returncode == 2 and reason in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_finetune_refuses_models_without_a_training_loop(tmp_path, trained_checkpoints):
    counts = run_module("training", "finetune", trained_checkpoints["bigram-counts"], "--out", tmp_path / "o")
    assert counts.returncode == 2 and "no training loop to continue" in counts.stderr, counts.stderr
