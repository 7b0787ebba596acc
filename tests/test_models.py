import pytest
import torch

from training.models import MLP, ModelConfig, build_model, nll


@pytest.mark.parametrize("model_type, block_size", [("bigram-counts", 1), ("bigram-neural", 1), ("mlp", 3), ("mlp", 5)])
def test_forward_maps_contexts_to_vocab_logits(model_type, block_size):
    model = build_model(ModelConfig(model_type, vocab_size=27, block_size=block_size, n_embd=4, n_hidden=16))
    context = torch.randint(0, 27, (7, model.cfg.block_size))
    logits = model(context)
    assert logits.shape == (7, 27) and logits.dtype == torch.float32


def test_bigram_counts_rows_are_smoothed_distributions():
    model = build_model(ModelConfig("bigram-counts", vocab_size=4, smoothing=1.0))
    X = torch.tensor([[0], [1], [1], [2]])
    Y = torch.tensor([1, 2, 2, 0])
    model.fit(X, Y)
    probs = model.log_probs.exp()
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert probs[1, 2].item() == pytest.approx(3 / 6)  # 2 counts + 1, over 2 + 4
    assert model.counts[1, 2].item() == 2


def test_mlp_hidden_layers_are_linear_without_bias_then_batchnorm_then_tanh():
    model = MLP(ModelConfig("mlp", vocab_size=27, block_size=3, n_embd=10, n_hidden=64, n_layers=2))
    kinds = [type(m).__name__ for m in model.hidden]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh"] * 2
    assert all(m.bias is None for m in model.hidden if isinstance(m, torch.nn.Linear))


def test_mlp_starts_near_uniform_loss():
    torch.manual_seed(0)
    model = MLP(ModelConfig("mlp", vocab_size=27, block_size=3, n_embd=10, n_hidden=200))
    X = torch.randint(0, 27, (512, 3))
    Y = torch.randint(0, 27, (512,))
    assert nll(model, X, Y) == pytest.approx(torch.log(torch.tensor(27.0)).item(), abs=0.1)
