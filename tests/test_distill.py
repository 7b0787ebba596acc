"""Distillation: the student learns the teacher's soft targets, reproducibly, from the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

from training.cli import main
from training.distill import DistillConfig, Distillation
from training.checkpoint import load_checkpoint
from training.data import Dataset

STUDENT = ["--n-embd", "8", "--n-hidden", "16", "--batch-size", "32"]


def test_distillation_loss_is_hintons_soft_and_hard_mix(tiny_wavenet):
    teacher = load_checkpoint(tiny_wavenet[0])
    data = Dataset.from_words(teacher.words(), "x", teacher.vocab)
    objective = Distillation(teacher.model, data, 8, DistillConfig(temperature=2.0, alpha=0.7, transfer_names=50),
                             teacher.meta)
    X, Y = objective.train_set
    assert len(X) > len(data.contexts("train", 8)[0])  # the transfer set's contexts joined the split's
    rows = torch.arange(0, len(X), 97)
    logits = torch.randn(len(rows), data.vocab.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p_teacher = torch.softmax(teacher.model(X[rows]) / 2.0, dim=-1)
    log_student = F.log_softmax(logits / 2.0, dim=-1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(-1).mean()
    expected = 0.7 * 4.0 * kl + 0.3 * F.cross_entropy(logits, Y[rows])
    assert torch.allclose(objective.loss(logits, Y[rows], rows), expected, rtol=1e-4)


def test_distill_cli_records_its_teacher_and_same_seed_gives_the_same_checkpoint(tiny_wavenet, tmp_path, capsys):
    teacher, _ = tiny_wavenet
    for out in ("a", "b"):
        main(["distill", str(teacher), "--out", str(tmp_path / out), "--steps", "60", "--transfer-names", "300",
              "--temperature", "1.5", "--alpha", "0.8", "--no-plots", "--quiet", *STUDENT])
    assert "distilled from" in capsys.readouterr().out
    meta = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    distillation = meta["training"]["distillation"]
    assert (distillation["temperature"], distillation["alpha"], distillation["transfer_names"]) == (1.5, 0.8, 300)
    assert distillation["teacher"]["model_type"] == "wavenet" and meta["model_type"] == "wavenet"
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert meta["metrics"] == json.loads((tmp_path / "b" / "checkpoint.json").read_text())["metrics"]


@pytest.mark.parametrize("bad", [["--alpha", "1.5"], ["--temperature", "0"], ["--transfer-names", "-1"]])
def test_distill_cli_refuses_bad_options_with_one_line(tiny_wavenet, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(tiny_wavenet[0]), "--out", str(tmp_path / "x"), *bad])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
