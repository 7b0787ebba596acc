"""Lecture 3's diagnostics: is the network healthy while it trains?

Recorded on every `every`-th step (and the last): per tanh layer the share of saturated outputs, dead
units, mean and std of the outputs and of the loss's gradient with respect to them, small histograms
of both; per weight matrix the update-to-data ratio. Kept in the checkpoint folder beside the loss
history; `python -m training plot` draws them and `python -m training diagnose` judges them.
"""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn as nn

SATURATION = 0.97  # |tanh| above this passes less than 6% of the gradient (1 - h**2): lecture 3's cut
HIST_BINS = 40
GRAD_RANGE_STDS = 4  # a step's gradient histograms span +- this many stds of its widest layer
FORMAT_VERSION = 1


def is_recording_step(step: int, every: int, last_step: int) -> bool:
    return every > 0 and (step % every == 0 or step == last_step)


def _rounded(x: float) -> float:
    return float(f"{x:.6g}")


@torch.no_grad()
def layer_record(h: torch.Tensor, grad: torch.Tensor, grad_range: float) -> dict:
    """Statistics of one tanh layer's output h and dloss/dh, [B, C] or [B, T, C] (C = units)."""
    h, grad = h.reshape(-1, h.shape[-1]), grad.reshape(-1, grad.shape[-1])  # [rows, units]
    saturated = h.abs() > SATURATION
    moments = torch.stack([saturated.float().mean(), h.mean(), h.std(), grad.mean(), grad.std()]).tolist()
    return {
        **{key: _rounded(v) for key, v in zip(("saturated", "mean", "std", "grad_mean", "grad_std"), moments)},
        "dead": int(saturated.all(0).sum()),  # saturated for every row of the batch: no gradient flows through
        "units": h.shape[1],
        "hist": [int(c) for c in torch.histc(h, HIST_BINS, -1.0, 1.0).tolist()],
        "grad_hist": [int(c) for c in torch.histc(grad, HIST_BINS, -grad_range, grad_range).tolist()],
    }


@torch.no_grad()
def log10_update_ratio(before: torch.Tensor, after: torch.Tensor) -> float | None:
    """log10(std of the change over the step / std of the weights before it); None when nothing moved.

    The change actually applied, not lr * grad: for AdamW they differ (the update is lr * m / sqrt(v)
    plus the decay), and it is the applied change that says how fast the weights move; for plain SGD
    the two are the same.
    """
    ratio = ((after - before).std() / before.std()).item()
    return _rounded(math.log10(ratio)) if ratio > 0 else None


class Recorder:
    """Hooks the tanh outputs on recording steps only, so every other step runs as if it were absent.

    In the loop: start(step) before the forward, gradients_ready() after backward, update_applied()
    after the optimizer's step. Nothing here draws random numbers.
    """

    def __init__(self, model: nn.Module, every: int, last_step: int, records: list[dict] | None = None):
        self.every, self.last_step = every, last_step
        self.tanh_layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Tanh)}
        self.weights = {name: p for name, p in model.named_parameters() if p.dim() == 2}
        self.records = list(records or [])
        self._record: dict | None = None  # the step being recorded
        self._outputs: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._weights_before: dict[str, torch.Tensor] = {}

    def start(self, step: int, lr: float) -> None:
        if not is_recording_step(step, self.every, self.last_step):
            return
        self._record = {"step": step, "lr": _rounded(lr)}
        self._hooks = [m.register_forward_hook(self._keep_output(name)) for name, m in self.tanh_layers.items()]

    def _keep_output(self, name: str):
        def hook(module, inputs, output):
            output.retain_grad()
            self._outputs[name] = output
        return hook

    def gradients_ready(self) -> None:
        if self._record is None:
            return
        for hook in self._hooks:
            hook.remove()
        grads = {name: out.grad for name, out in self._outputs.items()}
        widest = max((g.std().item() for g in grads.values()), default=0.0)
        grad_range = _rounded(GRAD_RANGE_STDS * widest) or 1.0
        self._record["grad_range"] = grad_range
        self._record["layers"] = {name: layer_record(out.detach(), grads[name], grad_range)
                                  for name, out in self._outputs.items()}
        self._weights_before = {name: p.detach().clone() for name, p in self.weights.items()}

    def update_applied(self) -> None:
        if self._record is None:
            return
        self._record["update_ratio"] = {name: log10_update_ratio(self._weights_before[name], p.detach())
                                        for name, p in self.weights.items()}
        self.records.append(self._record)
        self._record, self._outputs, self._hooks, self._weights_before = None, {}, [], {}

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "every": self.every, "saturation_threshold": SATURATION,
                "hist_bins": HIST_BINS, "layers": list(self.tanh_layers), "weights": list(self.weights),
                "records": self.records}


# -- the health report ----------------------------------------------------------------------------------
# Healthy ranges, from lecture 3 and this project's default mlp (4% saturated at init, 33% after
# 30,000 steps as BatchNorm's gains grow, no dead unit, update ratios around 1e-3 to 1e-2.5).
SATURATED_AT_INIT_MAX = 0.25
SATURATED_AT_END_MAX = 0.50
UPDATE_RATIO_RANGE = (-4.0, -2.0)  # log10, judged on the median: the lr schedule lowers the last ones on purpose
NOTHING_TO_DIAGNOSE = {
    "bigram-counts": "bigram-counts is fitted by counting, without training steps: nothing to diagnose",
    "ensemble": "an ensemble is built from trained members, not trained: diagnose each member's checkpoint",
}


def _layer_health(name: str, first: dict, last: dict) -> dict:
    start, end = first["layers"][name], last["layers"][name]
    flags = []
    if start["saturated"] > SATURATED_AT_INIT_MAX:
        flags.append(f"{start['saturated']:.0%} saturated at step {first['step']} (healthy <= "
                     f"{SATURATED_AT_INIT_MAX:.0%}): tanh inputs too large at init, usually an init gain too high "
                     "for a stack without BatchNorm")
    if end["saturated"] > SATURATED_AT_END_MAX:
        flags.append(f"{end['saturated']:.0%} saturated at step {last['step']} (healthy <= "
                     f"{SATURATED_AT_END_MAX:.0%}): usually a learning rate too high or an init gain too large")
    if end["dead"]:
        flags.append(f"{end['dead']} of {end['units']} units saturated on every example at step {last['step']}: "
                     "no gradient reaches their weights; usually an init gain or learning rate too high")
    return {"name": name, "saturated_start": start["saturated"], "saturated_end": end["saturated"],
            "dead_end": end["dead"], "units": end["units"], "flags": flags}


def _weight_health(name: str, records: list[dict], judged: bool) -> dict:
    ratios = [r["update_ratio"][name] for r in records]
    # Step 0 left out: Adam's first step is lr-sized whatever the gradient, large against a small output layer.
    moved = [x for x in ratios[1:] or ratios if x is not None]
    median = _rounded(statistics.median(moved)) if moved else None
    low, high = UPDATE_RATIO_RANGE
    flags = []
    if judged and (median is None or median < low):
        flags.append(f"update ratio median {median or float('-inf'):.2f} (healthy >= {low:g}): the weights barely "
                     "move; usually a learning rate too low, or (with BatchNorm) an init gain too large")
    if judged and median is not None and median > high:
        flags.append(f"update ratio median {median:.2f} (healthy <= {high:g}): the weights change fast; usually a "
                     "learning rate too high, or weights initialised too small")
    return {"name": name, "update_ratio_start": ratios[0], "update_ratio_median": median,
            "update_ratio_end": ratios[-1], "flags": flags}


def health_report(meta: dict, diagnostics: dict | None) -> dict | None:
    """The run's health as data; None when a trained run recorded no diagnostics."""
    model_type, config = meta["model_type"], meta.get("model_config", {})
    report = {"model_type": model_type, "steps": meta["training"].get("completed_steps", 0),
              "init_gain": config.get("init_gain"), "batchnorm": config.get("batchnorm")}
    if model_type in NOTHING_TO_DIAGNOSE:
        return {**report, "note": NOTHING_TO_DIAGNOSE[model_type], "layers": [], "weights": [], "healthy": True}
    if not diagnostics or not diagnostics["records"]:
        return None
    records = diagnostics["records"]
    layers = [_layer_health(name, records[0], records[-1]) for name in diagnostics["layers"]]
    # Lecture 3's 1e-3 rule is for stacks of tanh layers; one convex softmax layer takes far larger steps.
    weights = [_weight_health(name, records, judged=bool(layers)) for name in diagnostics["weights"]]
    note = None if layers else "no tanh layers: update ratios shown, not judged (lecture 3's rule is for tanh stacks)"
    return {**report, "note": note, "every": diagnostics["every"], "records": len(records),
            "steps_recorded": [records[0]["step"], records[-1]["step"]], "layers": layers, "weights": weights,
            "healthy": not any(item["flags"] for item in layers + weights)}


def format_report(report: dict, path) -> str:
    gain = report["init_gain"] if report["layers"] else None  # a bigram has neither gain nor BatchNorm
    head = (f"{path}: {report['model_type']}, {report['steps']} steps"
            + (f", init gain {gain:.4g}, {'BatchNorm' if report['batchnorm'] else 'no BatchNorm'}" if gain else ""))
    if not report["layers"] and not report["weights"]:
        return f"{head}\n{report['note']}"
    lines = [f"{head}; diagnostics every {report['every']} steps, {report['records']} records "
             f"(steps {report['steps_recorded'][0]}-{report['steps_recorded'][1]})"]
    if report["layers"]:
        lines.append(f"  {'tanh layer':<18} {'saturated: start':>16} {'end':>6}  {'dead units (end)':>16}")
        lines += [f"  {l['name']:<18} {l['saturated_start']:>16.1%} {l['saturated_end']:>6.1%}  "
                  f"{l['dead_end']:>9}/{l['units']:<6}" for l in report["layers"]]
    lines.append(f"  {'weight matrix':<18} {'log10 update ratio: start':>26} {'median':>7} {'end':>7}")
    fmt = lambda x: f"{x:7.2f}" if x is not None else "      –"  # noqa: E731
    lines += [f"  {w['name']:<18} {fmt(w['update_ratio_start']):>26} {fmt(w['update_ratio_median'])} "
              f"{fmt(w['update_ratio_end'])}" for w in report["weights"]]
    if report["note"]:
        lines.append(f"  {report['note']}")
    flags = [f"  ! {item['name']}: {flag}" for item in report["layers"] + report["weights"] for flag in item["flags"]]
    low, high = UPDATE_RATIO_RANGE
    healthy = (f"  healthy: saturation <= {SATURATED_AT_INIT_MAX:.0%} at init and <= {SATURATED_AT_END_MAX:.0%} "
               f"at the end, no dead units, update ratio medians in [{low:g}, {high:g}]")
    return "\n".join(lines + (flags or ([healthy] if report["layers"] else [])))
