"""Lecture 3's training diagnostics: what is recorded, that it changes nothing, the figures and the report."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_module
from training.cli import main
from training.data import Dataset, load_names_file
from training.models import ModelConfig, build_model
from training.train import TrainConfig, _make_optimizer, train

TINY = ["--n-embd", "4", "--n-hidden", "32", "--batch-size", "32", "--quiet", "--no-plots"]


def _dataset(path):
    return Dataset.from_words(load_names_file(path), str(path))


def _direct_tanh_outputs(model, xb):
    """The mlp's tanh outputs written out from its parameters: BatchNorm with the batch's statistics."""
    x, outputs = model.embedding(xb).flatten(1), []
    for linear, bn in zip(model.hidden[0::3], model.hidden[1::3]):
        z = x @ linear.weight.T
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        x = torch.tanh(z)
        outputs.append(x)
    return outputs, model.head(x)


def _histogram(values, lo, hi, bins):
    return np.histogram(values.detach().double().numpy(), bins=bins, range=(lo, hi))[0].tolist()


def test_recorded_statistics_equal_ones_computed_from_the_model_on_the_same_batch(small_names_file, tmp_path):
    data = _dataset(small_names_file)
    cfg = ModelConfig("mlp", data.vocab.size, n_embd=8, n_hidden=48, n_layers=2)
    tc = TrainConfig(steps=3, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.05, seed=11,
                     diagnostics_every=1)
    train(cfg, tc, data, tmp_path, progress=False)
    diagnostics = json.loads((tmp_path / "diagnostics.json").read_text())
    assert [r["step"] for r in diagnostics["records"]] == [0, 1, 2]
    recorded = diagnostics["records"][0]

    # Step 0 again, by hand: the same seed gives the same initial model and the same first batch.
    generator = torch.Generator().manual_seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = build_model(ModelConfig("mlp", data.vocab.size, n_embd=8, n_hidden=48, n_layers=2), generator)
    X, Y = data.contexts("train", 3)
    ix = torch.randint(0, len(X), (tc.batch_size,), generator=generator)
    outputs, logits = _direct_tanh_outputs(model, X[ix])
    grads = torch.autograd.grad(F.cross_entropy(logits, Y[ix]), outputs)

    assert list(recorded["layers"]) == diagnostics["layers"] == ["hidden.2", "hidden.5"]
    for name, h, g in zip(diagnostics["layers"], outputs, grads):
        layer = recorded["layers"][name]
        saturated = h.abs() > 0.97
        assert layer["saturated"] == pytest.approx(saturated.double().mean().item(), rel=1e-5)
        assert layer["dead"] == int(saturated.all(0).sum()) and layer["units"] == 48
        moments = {"mean": (h.mean(), h.std()), "std": (h.std(), h.std()),
                   "grad_mean": (g.mean(), g.std()), "grad_std": (g.std(), g.std())}
        for key, (value, spread) in moments.items():  # a mean near 0 is float noise: compare it to the spread
            assert layer[key] == pytest.approx(value.item(), rel=1e-4, abs=1e-5 * spread.item()), key
        assert layer["hist"] == _histogram(h, -1, 1, diagnostics["hist_bins"])
        r = recorded["grad_range"]
        assert layer["grad_hist"] == _histogram(g, -r, r, diagnostics["hist_bins"])

    # The update-to-data ratio of the optimizer's first step, from the weights before and after it.
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.dim() == 2}
    optimizer = _make_optimizer(model, tc)
    _, logits = _direct_tanh_outputs(model, X[ix])
    F.cross_entropy(logits, Y[ix]).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert set(recorded["update_ratio"]) == set(before) == {"embedding.weight", "hidden.0.weight",
                                                            "hidden.3.weight", "head.weight"}
    for name, weight in before.items():
        direct = math.log10(((after[name].detach() - weight).std() / weight.std()).item())
        assert recorded["update_ratio"][name] == pytest.approx(direct, abs=1e-4), name


def test_same_seed_gives_the_same_weights_with_diagnostics_on_every_step_or_off(small_names_file, tmp_path):
    data = _dataset(small_names_file)
    for every in (1, 0):  # dropout too: the recorder must not draw from the global generator either
        cfg = ModelConfig("mlp", data.vocab.size, n_embd=8, n_hidden=32, dropout=0.1)
        train(cfg, TrainConfig(steps=60, batch_size=32, lr=3e-3, optimizer="adamw", seed=4, diagnostics_every=every),
              data, tmp_path / str(every), progress=False)
    assert (tmp_path / "1" / "model.safetensors").read_bytes() == (tmp_path / "0" / "model.safetensors").read_bytes()
    assert len(json.loads((tmp_path / "1" / "diagnostics.json").read_text())["records"]) == 60
    assert not (tmp_path / "0" / "diagnostics.json").exists()


def _diagnose(checkpoint) -> dict:
    result = run_module("training", "diagnose", checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _train_cli(out, *args):
    result = run_module("training", "train", "--model", "mlp", *TINY, *args, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_init_gain_10_without_batchnorm_saturates_at_step_0_and_is_flagged(small_names_file, tmp_path):
    common = ["--no-batchnorm", "--steps", "40", "--diagnostics-every", "10", "--data", small_names_file]
    default = _diagnose(_train_cli(tmp_path / "default", *common))
    large = _diagnose(_train_cli(tmp_path / "gain10", *common, "--init-gain", "10"))
    assert large["init_gain"] == 10.0 and default["init_gain"] == pytest.approx(5 / 3)
    assert json.loads((tmp_path / "gain10" / "checkpoint.json").read_text())["model_config"]["init_gain"] == 10.0
    assert large["layers"][0]["saturated_start"] > 0.6 > 3 * default["layers"][0]["saturated_start"]
    assert not default["layers"][0]["flags"] and not large["healthy"]
    assert any("init gain" in flag for flag in large["layers"][0]["flags"])

    text = run_module("training", "diagnose", tmp_path / "gain10")
    assert text.returncode == 0 and "! hidden.1:" in text.stdout and "init gain 10" in text.stdout


def test_with_batchnorm_the_init_gain_shows_in_the_update_ratio_not_in_saturation(small_names_file, tmp_path):
    # Lecture 3's point: BatchNorm undoes the weights' scale, so a larger gain only slows their updates.
    default = _diagnose(_train_cli(tmp_path / "default", "--steps", "20", "--data", small_names_file))
    large = _diagnose(_train_cli(tmp_path / "gain10", "--steps", "20", "--data", small_names_file,
                                 "--init-gain", "10"))
    assert large["layers"][0]["saturated_start"] == default["layers"][0]["saturated_start"]
    ratio = {report["init_gain"]: {w["name"]: w["update_ratio_start"] for w in report["weights"]}
             for report in (default, large)}
    assert ratio[5 / 3]["hidden.0.weight"] - ratio[10.0]["hidden.0.weight"] == pytest.approx(math.log10(6), abs=0.05)
    assert ratio[5 / 3]["embedding.weight"] == pytest.approx(ratio[10.0]["embedding.weight"], abs=0.01)


@pytest.mark.parametrize("model, figures", [
    ("mlp", {"activations.png", "gradients.png", "saturation.png", "update_ratio.png"}),
    ("wavenet", {"activations.png", "gradients.png", "saturation.png", "update_ratio.png"}),
    ("bigram-neural", {"update_ratio.png"}),
])
def test_plot_draws_every_diagnostics_figure_of_a_real_short_run(small_names_file, tmp_path, model, figures):
    out = tmp_path / model
    result = run_module("training", "train", "--model", model, "--n-embd", "4", "--n-hidden", "16", "--steps", "30",
                        "--diagnostics-every", "10", "--data", small_names_file, "--quiet", "--no-plots", "--out", out)
    assert result.returncode == 0, result.stderr
    plot = run_module("training", "plot", out)
    assert plot.returncode == 0, plot.stderr
    drawn = {line.rsplit("/", 1)[-1] for line in plot.stdout.split()}
    assert figures <= drawn and not ({"activations.png", "saturation.png"} - figures) & drawn
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / figure).stat().st_size > 10_000


def test_diagnose_says_a_bigram_counts_model_has_nothing_to_diagnose(small_names_file, tmp_path):
    result = run_module("training", "train", "--model", "bigram-counts", "--data", small_names_file, "--no-plots",
                        "--out", tmp_path / "bc")
    assert result.returncode == 0, result.stderr
    report = run_module("training", "diagnose", tmp_path / "bc")
    assert report.returncode == 0, report.stderr
    assert "nothing to diagnose" in report.stdout and len(report.stdout.splitlines()) == 2


@pytest.fixture(scope="module")
def run_without_diagnostics(small_names_file, tmp_path_factory):
    return _train_cli(tmp_path_factory.mktemp("diag") / "off", "--steps", "5", "--diagnostics-every", "0",
                      "--data", small_names_file)


@pytest.mark.parametrize("where, message", [
    ("{tmp}/missing", "not a checkpoint folder"),
    ("{off}", "no diagnostics recorded"),
    ("{tmp}/broken", "diagnostics.json: not valid JSON"),
])
def test_diagnose_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, run_without_diagnostics, where,
                                                               message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("checkpoint.json", "model.safetensors"):
        (broken / name).write_bytes((run_without_diagnostics / name).read_bytes())
    (broken / "diagnostics.json").write_text("{truncated")
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", where.format(tmp=tmp_path, off=run_without_diagnostics), "--json"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr


def test_diagnose_bad_input_exits_2_without_traceback_in_a_real_process(run_without_diagnostics):
    result = run_module("training", "diagnose", run_without_diagnostics)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
