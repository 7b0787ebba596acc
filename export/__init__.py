"""Checkpoint -> folded ONNX + torch.export model, parity-checked, published into a model registry."""
