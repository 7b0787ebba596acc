"""BatchNorm folding and --calibrate: exact, generic over Sequentials, and leave the original alone."""
import copy

import pytest
import torch
import torch.nn as nn

from export.calibrate import calibrate_batchnorms
from export.fold import FoldError, batchnorm_names, fold_batchnorms, fold_linear_batchnorm
from training.models import MLP, ModelConfig


class LastDimBatchNorm(nn.BatchNorm1d):
    """Normalises the last dimension of [B, T, C] over B and T, like the WaveNet lecture's BatchNorm1d."""

    def forward(self, x):
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def _randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm1d):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 2)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 3 + 0.05)
                if bn.affine:
                    bn.weight.copy_(torch.randn(bn.num_features, generator=g))
                    bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("linear_bias", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_linear_equals_linear_then_batchnorm_on_random_statistics(linear_bias, affine):
    torch.manual_seed(0)
    linear = nn.Linear(12, 20, bias=linear_bias)
    bn = _randomise_statistics(nn.BatchNorm1d(20, affine=affine))
    x = torch.randn(64, 12)
    with torch.no_grad():
        expected = bn(linear(x))
        got = fold_linear_batchnorm(linear, bn)(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_folding_a_sequential_over_batch_time_channels_inputs():
    torch.manual_seed(1)
    model = _randomise_statistics(nn.Sequential(
        nn.Linear(8, 16, bias=False), LastDimBatchNorm(16), nn.Tanh(),
        nn.Sequential(nn.Linear(16, 16), LastDimBatchNorm(16), nn.Tanh()),  # nested: found too
        nn.Linear(16, 5),
    ))
    x = torch.randn(32, 4, 8)  # [B, T, C]
    folded = fold_batchnorms(model)
    assert batchnorm_names(folded) == []
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3][1], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)


def test_folding_the_mlp_matches_it_and_leaves_the_original_untouched():
    model = _randomise_statistics(MLP(ModelConfig("mlp", 27, n_embd=5, n_hidden=32, n_layers=3),
                                      torch.Generator().manual_seed(0)))
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorms(model)
    context = torch.randint(0, 27, (100, 3))
    with torch.no_grad():
        assert (folded(context) - model(context)).abs().max() < 1e-5
    assert batchnorm_names(model) == ["hidden.1", "hidden.4", "hidden.7"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert batchnorm_names(folded) == []


def test_a_batchnorm_not_after_a_linear_is_refused():
    model = nn.Sequential(nn.Tanh(), nn.BatchNorm1d(4))
    with pytest.raises(FoldError, match="does not directly follow a Linear"):
        fold_batchnorms(model)


def test_a_batchnorm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(FoldError, match="no running statistics"):
        fold_batchnorms(model)


def test_calibrated_eval_mode_reproduces_a_full_batch_train_mode_forward():
    model = _randomise_statistics(MLP(ModelConfig("mlp", 27, n_embd=4, n_hidden=16, n_layers=2),
                                      torch.Generator().manual_seed(0)))
    before = copy.deepcopy(model.state_dict())
    contexts = torch.randint(0, 27, (5000, 3))
    calibrated, count = calibrate_batchnorms(model, contexts)
    assert count == 2 and not calibrated.training
    with torch.no_grad():
        full_batch = copy.deepcopy(model).train()(contexts)
        assert (calibrated(contexts) - full_batch).abs().max() < 1e-5
    bn = calibrated.hidden[1]
    assert bn.momentum == model.hidden[1].momentum
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
