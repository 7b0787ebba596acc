"""Export of real (tiny) trained checkpoints: the ONNX contract, model.pt2, parity, the export CLI."""
import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export import onnx_export
from export.calibrate import calibrate_batchnorms
from export.cli import main
from export.fold import fold_batchnorms
from export.parity import MAX_ABS_LOGIT_DIFF, ParityError, check_parity
from export.pipeline import export_checkpoint
from training.checkpoint import load_checkpoint
from training.data import Dataset, load_names_file
from training.models import ModelConfig, nll
from training.train import TrainConfig, train

CONTRACT_KEYS = {"format", "format_version", "name", "version", "created_at", "model_type", "vocab", "block_size",
                 "vocab_size", "data_sha256", "parameters", "metrics", "parity", "calibrated", "checkpoint", "files",
                 "training_names", "opset"}


@pytest.fixture(scope="module")
def dataset(small_names_file):
    return Dataset.from_words(load_names_file(small_names_file), str(small_names_file))


@pytest.fixture(scope="module")
def mlp_checkpoint(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "mlp"
    train(ModelConfig("mlp", dataset.vocab.size, n_embd=4, n_hidden=16, n_layers=2),
          TrainConfig(steps=50, batch_size=32, lr=3e-3, optimizer="adamw", eval_every=50), dataset, out, progress=False)
    return out


@pytest.fixture(scope="module")
def published(mlp_checkpoint, tmp_path_factory):
    """(registry, version folder) of the MLP exported through the command line's main (in-process: no
    second torch start-up; `python -m export` as a subprocess runs in test_export_registry.py)."""
    root = tmp_path_factory.mktemp("registry")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main([str(mlp_checkpoint), "--registry", str(root)])
    version = (root / "mlp" / "LATEST").read_text().strip()
    assert stdout.getvalue().startswith(f"published mlp/{version} -> ")
    return root, root / "mlp" / version


def _tamper(onnx_path):
    """Nudge every weight matrix a little, as a broken exporter or a corrupted copy might."""
    model = onnx.load(onnx_path)
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.dtype == np.float32 and weights.ndim == 2:
            tensor.CopyFrom(numpy_helper.from_array(weights + np.float32(0.01), tensor.name))
    onnx.save_model(model, onnx_path)


def test_published_version_follows_the_manifest_contract(published, mlp_checkpoint, dataset):
    root, folder = published
    manifest = json.loads((folder / "manifest.json").read_text())
    meta = json.loads((mlp_checkpoint / "checkpoint.json").read_text())
    assert CONTRACT_KEYS <= set(manifest)
    assert (manifest["format"], manifest["format_version"], manifest["name"]) == ("namegen.model", 1, "mlp")
    assert manifest["version"] == folder.name and manifest["created_at"].endswith("Z")
    assert manifest["vocab"] == list(dataset.vocab.chars) and manifest["vocab"][0] == "."
    assert (manifest["block_size"], manifest["vocab_size"]) == (3, dataset.vocab.size)
    assert manifest["metrics"] == meta["metrics"] and manifest["calibrated"] is False
    assert manifest["data_sha256"] == dataset.sha256 and manifest["opset"] >= 18
    assert manifest["checkpoint"] == str(mlp_checkpoint.resolve())
    parity = manifest["parity"]
    assert parity["onnx_max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF and parity["pt2_max_abs_logit_diff"] <= MAX_ABS_LOGIT_DIFF
    assert abs(parity["torch_val_nll"] - meta["metrics"]["val_nll"]) < 1e-6
    assert parity["val_contexts"] == len(dataset.contexts("val", 3)[0])
    names = (folder / manifest["training_names"]).read_text(encoding="utf-8").splitlines()
    assert names == sorted(set(dataset.words))


def test_file_hashes_in_the_manifest_match(published):
    import hashlib

    _, folder = published
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.pt2", "training_names.txt"}
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha


def test_onnx_graph_passes_the_checker_and_has_no_batchnorm(published, mlp_checkpoint):
    _, folder = published
    model = onnx.load(folder / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert onnx_export.batchnorm_nodes(model) == []
    assert len(list(folder.iterdir())) == 4  # single-file ONNX: no external data beside it
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in load_checkpoint(mlp_checkpoint).model.modules())


def test_onnx_metadata_round_trips(published, dataset):
    _, folder = published
    manifest = json.loads((folder / "manifest.json").read_text())
    metadata = onnx_export.read_metadata(folder / "model.onnx")
    assert json.loads(metadata["vocab"]) == list(dataset.vocab.chars)
    assert int(metadata["block_size"]) == 3
    assert metadata["model_type"] == "mlp" and metadata["version"] == folder.name
    assert metadata["data_sha256"] == dataset.sha256
    assert float(metadata["val_nll"]) == manifest["metrics"]["val_nll"]
    assert float(metadata["test_nll"]) == manifest["metrics"]["test_nll"]


def test_onnx_runtime_runs_any_batch_size_like_the_trained_model(published, mlp_checkpoint, dataset):
    _, folder = published
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("context", "tensor(int64)", ["batch", 3])
    assert (out.name, out.type, out.shape) == ("logits", "tensor(float)", ["batch", dataset.vocab.size])
    model = load_checkpoint(mlp_checkpoint).model
    for rows in (1, 7, 300):
        context = torch.randint(0, dataset.vocab.size, (rows, 3))
        (logits,) = session.run(["logits"], {"context": context.numpy()})
        with torch.no_grad():
            assert np.abs(logits - model(context).numpy()).max() < 1e-5


def test_pt2_program_loads_and_runs_without_training_code(published):
    _, folder = published
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
            "print(tuple(m(torch.zeros(1, 3, dtype=torch.long)).shape), tuple(m(torch.zeros(9, 3, dtype=torch.long)).shape), "
            "sorted(k for k in sys.modules if k.split('.')[0] in ('training', 'export')))")
    result = subprocess.run([sys.executable, "-c", code, str(folder / "model.pt2")], capture_output=True, text=True,
                            cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(1, 27) (9, 27) []"


def test_parity_check_refuses_a_tampered_onnx_model(published, mlp_checkpoint, dataset, tmp_path):
    _, folder = published
    for f in ("model.onnx", "model.pt2"):
        shutil.copy(folder / f, tmp_path / f)
    model = load_checkpoint(mlp_checkpoint).model
    val = dataset.contexts("val", 3)
    check_parity(model, tmp_path / "model.onnx", tmp_path / "model.pt2", *val)  # the untouched copy passes
    _tamper(tmp_path / "model.onnx")
    with pytest.raises(ParityError, match=r"ONNX Runtime \(model.onnx\) logits differ from torch by up to") as e:
        check_parity(model, tmp_path / "model.onnx", tmp_path / "model.pt2", *val)
    assert "model.pt2" not in str(e.value)


def test_parity_check_refuses_a_pt2_program_of_another_model(published, mlp_checkpoint, dataset, tmp_path):
    _, folder = published
    model = load_checkpoint(mlp_checkpoint).model
    other = fold_batchnorms(model)
    with torch.no_grad():
        other.head.bias += 0.01
    onnx_export.write_pt2(onnx_export.export_program(other, 3), tmp_path / "model.pt2")
    with pytest.raises(ParityError, match=r"torch.export \(model.pt2\) logits differ from torch by up to 0.01"):
        check_parity(model, folder / "model.onnx", tmp_path / "model.pt2", *dataset.contexts("val", 3))


def test_cli_refuses_to_publish_a_tampered_model(published, mlp_checkpoint, monkeypatch, capsys):
    root, folder = published
    before = sorted(p.name for p in root.rglob("*"))
    write_onnx = onnx_export.write_onnx

    def write_then_tamper(program, path, metadata):
        opset = write_onnx(program, path, metadata)
        _tamper(path)
        return opset

    monkeypatch.setattr(onnx_export, "write_onnx", write_then_tamper)
    with pytest.raises(SystemExit) as exit_:
        main([str(mlp_checkpoint), "--registry", str(root)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: parity check failed on ")
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing published, nothing left over
    assert (root / "mlp" / "LATEST").read_text() == folder.name + "\n"


def test_bigram_exports_as_a_log_probability_lookup(dataset, tmp_path):
    train(ModelConfig("bigram-counts", dataset.vocab.size), TrainConfig(0, 0, 0, "none"), dataset,
          tmp_path / "bigram", progress=False)
    published = export_checkpoint(tmp_path / "bigram", tmp_path / "registry")
    assert published.path.parent.name == "bigram-counts"
    assert published.manifest["block_size"] == 1
    log_probs = load_checkpoint(tmp_path / "bigram").model.log_probs.numpy()
    session = ort.InferenceSession(str(published.path / "model.onnx"), providers=["CPUExecutionProvider"])
    last_chars = np.arange(dataset.vocab.size, dtype=np.int64)[:, None]  # [vocab, 1]
    (logits,) = session.run(["logits"], {"context": last_chars})
    assert np.array_equal(logits, log_probs)


def test_calibrated_export_records_the_recomputed_metrics(mlp_checkpoint, dataset, tmp_path):
    published = export_checkpoint(mlp_checkpoint, tmp_path, name="mlp-calibrated", calibrate=True, keep=1)
    manifest = published.manifest
    assert manifest["calibrated"] is True and manifest["name"] == "mlp-calibrated"
    model = load_checkpoint(mlp_checkpoint).model
    calibrated, _ = calibrate_batchnorms(model, dataset.contexts("train", 3)[0])
    assert abs(manifest["metrics"]["val_nll"] - nll(calibrated, *dataset.contexts("val", 3))) < 1e-6
    assert abs(manifest["parity"]["torch_val_nll"] - manifest["metrics"]["val_nll"]) < 1e-6
    assert manifest["metrics"] != manifest["checkpoint_metrics"]


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp: tmp / "missing", "not a checkpoint folder"),
    (lambda tmp: tmp, "not a checkpoint folder"),
])
def test_cli_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, make_bad, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(make_bad(tmp_path)), "--registry", str(tmp_path / "registry")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "registry").exists()


def test_cli_export_into_a_registry_that_is_a_file_is_one_line_and_exit_2(mlp_checkpoint, tmp_path, capsys):
    (tmp_path / "registry").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main([str(mlp_checkpoint), "--registry", str(tmp_path / "registry")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: registry {tmp_path / 'registry'}: is a file, not a folder\n"
