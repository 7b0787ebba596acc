"""The WaveNet-style model: shapes, BatchNorm over 3-D inputs done right, training, export parity."""
import pytest
import torch

from training.cli import main
from training.models import BatchNormLastDim, FlattenConsecutive, ModelConfig, build_model, count_parameters


@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_wavenet_maps_contexts_to_vocab_logits(block_size):
    model = build_model(ModelConfig("wavenet", vocab_size=27, block_size=block_size, n_embd=6, n_hidden=16))
    assert model(torch.randint(0, 27, (5, block_size))).shape == (5, 27)


def test_lecture_sized_wavenet_has_the_lectures_parameter_count():
    model = build_model(ModelConfig("wavenet", vocab_size=27, block_size=8, n_embd=24, n_hidden=128))
    assert count_parameters(model) == 76579  # lecture 5's "scale up" model


def test_flatten_consecutive_pairs_neighbours_and_squeezes_the_last_level():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    pairs = FlattenConsecutive(2)(x)
    assert pairs.shape == (2, 2, 6) and pairs[0, 1].tolist() == [6, 7, 8, 9, 10, 11]
    assert FlattenConsecutive(2)(pairs).shape == (2, 12)


def test_batchnorm_over_3d_uses_statistics_over_batch_and_time():
    torch.manual_seed(0)
    bn = BatchNormLastDim(5, momentum=1.0)  # momentum 1: running stats = this batch's stats
    x = torch.randn(32, 4, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + 7.0
    y = bn(x)
    assert torch.allclose(y.mean(dim=(0, 1)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 1), unbiased=False), torch.ones(5), atol=1e-3)
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 1)), atol=1e-5)  # not x.mean(0): the lecture's bug
    assert torch.allclose(bn.running_var, x.var(dim=(0, 1), unbiased=True), atol=1e-4)
    bn.eval()  # eval normalises each channel with the running statistics, the same in every position
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(bn(x), expected, atol=1e-5)


def test_wavenet_needs_a_power_of_two_context():
    with pytest.raises(ValueError, match="power of 2"):
        build_model(ModelConfig("wavenet", vocab_size=27, block_size=6))


def test_wavenet_block_size_error_is_one_cli_line(tmp_path, capsys, small_names_file):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "wavenet", "--block-size", "6", "--data", str(small_names_file),
              "--out", str(tmp_path / "w")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_short_wavenet_run_lowers_the_loss(tiny_wavenet):
    _, meta = tiny_wavenet
    assert meta["metrics"]["val_nll"] < 2.9  # from about log(27) = 3.30 at init


def test_wavenet_exports_with_every_batchnorm_folded_and_parity(tiny_wavenet, tmp_path):
    from export.pipeline import export_checkpoint

    checkpoint, meta = tiny_wavenet
    published = export_checkpoint(checkpoint, tmp_path / "registry", name="wavenet")  # refuses on parity failure
    parity = published.manifest["parity"]
    assert parity["onnx_max_abs_logit_diff"] <= 1e-4
    assert abs(parity["onnx_val_nll"] - meta["metrics"]["val_nll"]) <= 1e-5
    assert published.manifest["block_size"] == 8


def test_exported_wavenet_serves_through_the_same_engine(tiny_wavenet, tmp_path):
    from export.pipeline import export_checkpoint
    from serving.engine import Engine, SamplingParams
    from serving.model import load_version
    from namegen.contract import MAX_NAME_LENGTH
    from serving.settings import Settings

    checkpoint, _ = tiny_wavenet
    version = export_checkpoint(checkpoint, tmp_path / "registry", name="wavenet").manifest["version"]
    model = load_version(Settings(registry=tmp_path / "registry", threads=1), "wavenet", version)
    engine = Engine(model, 256, max_queue=4, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20)
    result = engine.generate(SamplingParams(n=20, seed=3, prefix="ma"), timeout=60)
    engine.stop()
    model.close()
    assert len(result.names) == 20 and all(name.startswith("ma") for name in result.names)
    assert all(nll > 0 for nll in result.nlls)
