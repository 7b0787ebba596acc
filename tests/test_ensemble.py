"""Ensembles: the best served model is the mean of several wavenets' distributions."""
import pytest
import torch

from training.cli import main
from training.data import Dataset, load_names_file
from training.models import ModelConfig, build_model
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def second_wavenet(small_names_file, tmp_path_factory):
    data = Dataset.from_words(load_names_file(small_names_file), str(small_names_file))
    out = tmp_path_factory.mktemp("wavenet2") / "ck"
    train(ModelConfig("wavenet", data.vocab.size, block_size=8, n_embd=8, n_hidden=32, dropout=0.1),
          TrainConfig(steps=300, batch_size=64, lr=3e-3, optimizer="adamw", seed=7), data, out, progress=False)
    return out


def test_ensemble_predicts_the_mean_of_its_members_distributions():
    members = [ModelConfig("wavenet", 27, block_size=8, n_embd=4, n_hidden=8).to_dict(),
               ModelConfig("mlp", 27, block_size=8, n_embd=4, n_hidden=8).to_dict()]
    model = build_model(ModelConfig("ensemble", 27, members=members), torch.Generator().manual_seed(0)).eval()
    context = torch.randint(0, 27, (6, 8))
    mean = torch.stack([torch.softmax(m(context), dim=-1) for m in model.members]).mean(0)
    assert torch.allclose(torch.softmax(model(context), dim=-1), mean, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        build_model(ModelConfig("ensemble", 27, members=members[:1]))
    with pytest.raises(ValueError, match="block size"):
        build_model(ModelConfig("ensemble", 27, members=[members[0], {**members[1], "block_size": 3}]))


def test_ensemble_cli_beats_its_average_member_and_exports_with_parity(tiny_wavenet, second_wavenet, tmp_path,
                                                                      capsys):
    from export.pipeline import export_checkpoint
    from training.checkpoint import load_checkpoint

    first, _ = tiny_wavenet
    main(["ensemble", str(first), str(second_wavenet), "--out", str(tmp_path / "ens")])
    ensemble = load_checkpoint(tmp_path / "ens")
    member_val = [m["metrics"]["val_nll"] for m in ensemble.meta["training"]["members"]]
    # A mixture's NLL is at most the mean of its members' (Jensen); in practice clearly below the best one.
    assert ensemble.meta["metrics"]["val_nll"] < min(member_val)
    published = export_checkpoint(tmp_path / "ens", tmp_path / "registry", name="best")
    assert published.manifest["model_type"] == "ensemble"
    assert abs(published.manifest["parity"]["onnx_val_nll"] - ensemble.meta["metrics"]["val_nll"]) <= 1e-5
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # one member only: one line, exit 2
        main(["ensemble", str(first), "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
