"""PNG figures of a checkpoint: loss curve, the lecture's bigram count heatmap, the character embedding,
and lecture 3's training diagnostics (activation and gradient histograms, saturation, update ratios)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .checkpoint import Checkpoint, load_diagnostics, load_history  # noqa: E402


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


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histograms(diagnostics: dict, key: str, value_range, xlabel: str, path: Path) -> None:
    """Lecture 3's per-layer histograms at the first and the last recorded step, side by side.

    value_range(record) -> (lo, hi) of the record's fixed bins; each curve is a density, so layers and
    steps with different spreads compare by their widths.
    """
    records = diagnostics["records"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))  # own y scales: gradients grow tenfold in training
    for ax, record in zip(axes, (records[0], records[-1])):
        lo, hi = value_range(record)
        edges = torch.linspace(lo, hi, diagnostics["hist_bins"] + 1)
        centres, width = (edges[:-1] + edges[1:]) / 2, (hi - lo) / diagnostics["hist_bins"]
        for name, layer in record["layers"].items():
            counts = torch.tensor(layer[key], dtype=torch.float64)
            mean, std = layer[key.replace("hist", "mean")], layer[key.replace("hist", "std")]
            label = f"{name}: mean {mean:+.2g}, std {std:.2g}"
            if key == "hist":
                label += f", saturated {layer['saturated']:.1%}"
            ax.plot(centres, counts / max(counts.sum().item(), 1) / width, label=label)
        ax.set_title(f"step {record['step']}")
        ax.set_xlabel(xlabel)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    _save(fig, path)


def saturation_curve(diagnostics: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in diagnostics["records"]]
    for name in diagnostics["layers"]:
        ax.plot(steps, [100 * r["layers"][name]["saturated"] for r in diagnostics["records"]], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"% of tanh outputs with |h| > {diagnostics['saturation_threshold']}")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def update_ratio_curve(diagnostics: dict, path: Path) -> None:
    """Lecture 3's update-to-data ratio: how much of each weight matrix's spread one step changes."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in diagnostics["records"]]
    for name in diagnostics["weights"]:
        ratios = [r["update_ratio"][name] for r in diagnostics["records"]]
        ax.plot(steps, [float("nan") if x is None else x for x in ratios], label=name)
    ax.axhline(-3, color="k", ls="--", lw=1, label="1e-3 (lecture 3's guide)")
    ax.set_xlabel("step")
    ax.set_ylabel("log10(std of the step's change / std of the weights)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def diagnostics_plots(diagnostics: dict, out: Path) -> list[Path]:
    """The figures a run's diagnostics.json has data for: all four with tanh layers, else update ratios."""
    written = []
    if diagnostics["layers"]:
        _histograms(diagnostics, "hist", lambda r: (-1.0, 1.0), "tanh output", out / "activations.png")
        _histograms(diagnostics, "grad_hist", lambda r: (-r["grad_range"], r["grad_range"]),
                    "gradient of the loss with respect to the tanh output", out / "gradients.png")
        saturation_curve(diagnostics, out / "saturation.png")
        written += [out / "activations.png", out / "gradients.png", out / "saturation.png"]
    update_ratio_curve(diagnostics, out / "update_ratio.png")
    return written + [out / "update_ratio.png"]


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
    diagnostics = load_diagnostics(out)
    if diagnostics and diagnostics["records"]:
        written += diagnostics_plots(diagnostics, out)
    return written
