"""ONNX Runtime vs torch eval mode: val NLL of the exported MLP and forward time per row.

    .venv/bin/python bench/export_speed.py [--checkpoint DIR] [--data ../shared/data/names.txt]

Without --checkpoint, trains the default mlp (`python -m training train --model mlp`, a few minutes)
into runs/bench-mlp, or reuses the finished checkpoint already there. The export goes through
the real pipeline (fold, ONNX, parity check) into a temporary registry. The baseline is the unfused
trained model in torch eval mode, run beside ONNX Runtime in the same process on the same contexts,
both with --threads intra-op threads (default 1: on a small shared machine, torch's OpenMP pool with
one thread per core stalls whenever another process holds a core, which measures the neighbours).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, ROOT, machine_line, trained_checkpoint

sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from export.parity import mean_nll, onnx_logits  # noqa: E402
from export.pipeline import export_checkpoint  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.data import Dataset  # noqa: E402

BATCH_SIZES = (1, 1024)
RUNS = 7
ROWS_PER_RUN = 20480  # each run pushes this many rows: 20480 calls at batch 1, 20 at batch 1024


def _checkpoint(args) -> Path:
    return args.checkpoint or trained_checkpoint("mlp", data=args.data, threads=args.threads)


def _seconds_per_row(forward, contexts: torch.Tensor, batch: int) -> float:
    """Median over RUNS of (wall time / rows), after a warm-up run."""
    inputs = [contexts[i : i + batch] for i in range(0, len(contexts) - batch + 1, batch)]
    calls = ROWS_PER_RUN // batch
    per_row = []
    for run in range(RUNS + 1):
        start = time.perf_counter()
        for i in range(calls):
            forward(inputs[i % len(inputs)])
        if run:  # run 0 warms caches and allocators
            per_row.append((time.perf_counter() - start) / (calls * batch))
    return statistics.median(per_row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="an mlp checkpoint folder (default: train one)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both torch and ONNX Runtime")
    args = p.parse_args()

    checkpoint_path = _checkpoint(args)
    with tempfile.TemporaryDirectory() as registry_dir:
        published = export_checkpoint(checkpoint_path, registry_dir, name="bench")
        onnx_path = published.path / "model.onnx"
        checkpoint = load_checkpoint(checkpoint_path)
        model = checkpoint.model.eval()
        dataset = Dataset.from_words(checkpoint.words(), checkpoint.meta["data"]["source"], checkpoint.vocab)
        val_contexts, val_targets = dataset.contexts("val", checkpoint.block_size)

        ort_val_nll = mean_nll(onnx_logits(onnx_path, val_contexts), val_targets)
        with torch.inference_mode():
            torch_val_nll = mean_nll(model(val_contexts), val_targets)

        torch.set_num_threads(args.threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        shuffled = val_contexts[torch.randperm(len(val_contexts), generator=torch.Generator().manual_seed(0))]
        onnx_inputs = shuffled.numpy()

        def run_onnx(x):
            return session.run(["logits"], {"context": x})

        timings = {}
        with torch.inference_mode():
            for batch in BATCH_SIZES:
                timings[batch] = (_seconds_per_row(model, shuffled, batch),
                                  _seconds_per_row(run_onnx, onnx_inputs, batch))

    m = checkpoint.meta
    print(machine_line("export_speed"))
    print(f"python {platform.python_version()}  torch {torch.__version__} ({torch.get_num_threads()} threads)  "
          f"onnxruntime {ort.__version__} ({args.threads} intra-op threads)")
    print(f"checkpoint {checkpoint_path}: {m['model_type']} {m['parameters']} params, block_size "
          f"{m['block_size']}, {m['model_config']['n_layers']}x{m['model_config']['n_hidden']} hidden, "
          f"data {m['data']['source']}")
    parity = published.manifest["parity"]
    print(f"val NLL on {len(val_contexts)} contexts: onnx runtime {ort_val_nll:.6f}  torch eval {torch_val_nll:.6f}  "
          f"(checkpoint {m['metrics']['val_nll']:.6f}; max |dlogit| onnx {parity['onnx_max_abs_logit_diff']:.1e})")
    print(f"forward time per row, median of {RUNS} runs of {ROWS_PER_RUN} rows:")
    print(f"  {'batch':>5}  {'torch eval (unfused)':>20}  {'onnx runtime':>12}  {'torch/onnx':>10}")
    for batch, (torch_s, onnx_s) in timings.items():
        print(f"  {batch:>5}  {torch_s * 1e6:>17.3f} us  {onnx_s * 1e6:>9.3f} us  {torch_s / onnx_s:>9.2f}x")


if __name__ == "__main__":
    main()
