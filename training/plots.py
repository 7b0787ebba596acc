"""PNG figures of a checkpoint: loss curve, the lecture's bigram count heatmap, the character embedding."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .checkpoint import Checkpoint, load_history  # noqa: E402


def loss_curve(history: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, lw=0.8, alpha=0.7, label="train (minibatch)")
    if history["val"]:
        steps, losses = zip(*history["val"])
        ax.plot(steps, losses, "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def count_heatmap(counts: torch.Tensor, chars: tuple[str, ...], path: Path) -> None:
    """Lecture 1's figure: every bigram with its count."""
    v = len(chars)
    fig, ax = plt.subplots(figsize=(v * 0.6, v * 0.6))
    ax.imshow(counts.numpy(), cmap="Blues")
    for i in range(v):
        for j in range(v):
            ax.text(j, i, chars[i] + chars[j], ha="center", va="bottom", color="gray", fontsize=7)
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="top", color="gray", fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def embedding_2d(weight: torch.Tensor, chars: tuple[str, ...], path: Path) -> None:
    """Each character's embedding in 2-D: the first two principal components when wider."""
    w = weight.detach().float()
    if w.shape[1] > 2:
        w = w - w.mean(0)
        _, _, vh = torch.linalg.svd(w, full_matrices=False)
        w = w @ vh[:2].T
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.scatter(w[:, 0], w[:, 1], s=200)
    for i, ch in enumerate(chars):
        ax.text(w[i, 0].item(), w[i, 1].item(), ch, ha="center", va="center", color="white")
    ax.grid(alpha=0.3)
    ax.set_title("character embedding" + (" (PCA)" if weight.shape[1] > 2 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(checkpoint: Checkpoint) -> list[Path]:
    out, model, chars = checkpoint.path, checkpoint.model, checkpoint.vocab.chars
    written = []
    history = load_history(out)
    if history["train"] or history["val"]:
        loss_curve(history, out / "loss.png")
        written.append(out / "loss.png")
    if hasattr(model, "counts"):
        count_heatmap(model.counts, chars, out / "bigram_counts.png")
        written.append(out / "bigram_counts.png")
    if hasattr(model, "embedding"):
        embedding_2d(model.embedding.weight, chars, out / "embedding.png")
        written.append(out / "embedding.png")
    return written
