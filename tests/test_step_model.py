"""The wavenet's step model: exported with parity, loaded only when bit-identical to the full-context forward,
and names with caches equal to names without them, mixed with other traffic and joining mid-flight."""
import json
import shutil

import numpy as np
import pytest

from namegen import contract
from serving.engine import Engine, SamplingParams
from serving.model import load_version
from serving.settings import Settings
from test_serving_engine import SEEDED, mismatches, mixed_run, named


@pytest.fixture(scope="module")
def step_registry(tiny_wavenet, small_names_file, tmp_path_factory):
    """Two tiny block-16 wavenets (4 levels: the step model computes one node of levels 3 and 4, the full graph
    three; the second one wider in level 1 than above), their ensemble, and the block-8 tiny wavenet (no step
    model), exported for real."""
    from export.pipeline import export_checkpoint
    from training.cli import main
    from training.data import Dataset, load_names_file
    from training.models import ModelConfig
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("step")
    data = Dataset.from_words(load_names_file(small_names_file), str(small_names_file))
    for out, hidden, first, seed in (("w1", 32, 0, 1), ("w2", 16, 40, 5)):
        train(ModelConfig("wavenet", data.vocab.size, block_size=16, n_embd=8, n_hidden=hidden, n_hidden_first=first),
              TrainConfig(steps=200, batch_size=64, lr=3e-3, optimizer="adamw", seed=seed, diagnostics_every=0),
              data, root / out, progress=False)
    main(["ensemble", str(root / "w1"), str(root / "w2"), "--out", str(root / "ens")])
    export_checkpoint(root / "w1", root / "registry", name="wavenet")
    export_checkpoint(root / "ens", root / "registry", name="ensemble")
    export_checkpoint(tiny_wavenet[0], root / "registry", name="wavenet8")
    return root / "registry"


def make_engine(registry, name, step_cache=True, rows=4096, threads=2, chunk=1024):
    settings = Settings(registry=registry, threads=threads, max_batch_rows=rows, forward_chunk_rows=chunk,
                        step_cache=step_cache)
    model = load_version(settings, name, contract.read_latest(registry, name))
    return Engine(model, rows, max_queue=10_000, max_name_length=contract.MAX_NAME_LENGTH, attempts_per_name=20)


def manifest_of(registry, name):
    return json.loads((registry / name / contract.read_latest(registry, name) / contract.MANIFEST_FILE).read_text())


@pytest.mark.parametrize("name", ["wavenet", "ensemble"])
def test_step_model_is_exported_with_parity_hashed_and_listed(step_registry, name):
    manifest = manifest_of(step_registry, name)
    step = manifest["step_model"]
    assert step["file"] == contract.STEP_FILE and step["levels"] == 2  # block 16: levels 3 and 4 read rings
    assert step["width"] == (32 if name == "wavenet" else 32 + 16)  # an ensemble's members side by side
    assert contract.STEP_FILE in manifest["files"]
    assert step["parity"]["max_abs_logit_diff"] <= 1e-4
    assert abs(step["parity"]["val_nll"] - manifest["parity"]["onnx_val_nll"]) <= 1e-5


def test_a_wider_level_1_is_folded_into_the_tables(step_registry):
    # The ensemble's second member is 40 wide in level 1 and 16 above: its tables, steps and rings are 16 wide,
    # and the export's parity gates (full graph and step graph) held.
    member = json.loads((step_registry.parent / "w2" / "checkpoint.json").read_text())["model_config"]
    assert (member["n_hidden_first"], member["n_hidden"]) == (40, 16)
    manifest = manifest_of(step_registry, "ensemble")
    assert manifest["step_model"]["width"] == 32 + 16
    assert manifest["parity"]["onnx_max_abs_logit_diff"] <= 1e-4


def test_block_8_wavenets_get_tabled_levels_but_no_step_model(step_registry):
    # With levels 1-2 as pair tables, block 8's full graph computes one node per level: what a step would.
    manifest = manifest_of(step_registry, "wavenet8")
    assert "step_model" not in manifest and contract.STEP_FILE not in manifest["files"]
    assert manifest["parity"]["onnx_max_abs_logit_diff"] <= 1e-4
    engine = make_engine(step_registry, "wavenet8")
    assert engine.caches is None and len(engine.generate(SamplingParams(n=5, seed=1)).names) == 5
    engine.stop()


def test_step_parity_refuses_a_step_model_of_other_weights(step_registry):
    import torch

    from export.step_export import StepError, check_step_parity
    from training.checkpoint import load_checkpoint
    from training.data import Dataset

    checkpoint = load_checkpoint(step_registry.parent / "w1")
    dataset = Dataset.from_words(checkpoint.words(), "x", checkpoint.vocab)
    with torch.no_grad():
        checkpoint.model.head.bias[1] += 1e-3  # a reference the written step model does not compute
    folder = step_registry / "wavenet" / contract.read_latest(step_registry, "wavenet")
    words = [dataset.vocab.encode(w) for w in dataset.split.val]
    with pytest.raises(StepError, match="step model parity failed"):
        check_step_parity(checkpoint.model, folder / contract.STEP_FILE, 2, 32, words, *dataset.contexts("val", 16))


@pytest.mark.parametrize("name", ["wavenet", "ensemble"])
def test_names_with_step_caches_equal_names_without_them_mixed_and_joining_mid_flight(step_registry, name):
    reference = make_engine(step_registry, name, step_cache=False, threads=1)
    assert reference.caches is None
    alone = [named(reference.generate(p)) for p in SEEDED]
    reference.stop()
    mismatched = total = 0
    # Few rows: rows retire and others join every step; 100-row chunks: several chunks, small ones too.
    for rows, threads, chunk in [(5, 1, 1024), (300, 2, 100), (4096, 2, 1024)]:
        engine = make_engine(step_registry, name, rows=rows, threads=threads, chunk=chunk)
        assert engine.caches is not None and engine.runner.steps is not None
        differ, compared = mismatches(alone, mixed_run(engine, SEEDED, noise_requests=6 if rows == 5 else 30))
        engine.stop()
        mismatched, total = mismatched + differ, total + compared
    assert total > 300
    assert mismatched == 0, f"{mismatched} of {total} names differ"  # names and their NLLs, exactly


def test_versions_without_a_step_model_load_and_a_tampered_one_is_refused(step_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(step_registry, root)
    folder = root / "wavenet" / contract.read_latest(root, "wavenet")
    manifest = json.loads((folder / contract.MANIFEST_FILE).read_text())
    older = {k: v for k, v in manifest.items() if k != "step_model"}  # as exported before step models
    older["files"] = {f: h for f, h in manifest["files"].items() if f != contract.STEP_FILE}
    (folder / contract.MANIFEST_FILE).write_text(json.dumps(older))
    engine = make_engine(root, "wavenet")
    assert engine.caches is None and engine.runner.steps is None
    assert len(engine.generate(SamplingParams(n=5, seed=1)).names) == 5
    engine.stop()
    (folder / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    with open(folder / contract.STEP_FILE, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(contract.ContractError, match="model_step.onnx: sha256 differs"):
        make_engine(root, "wavenet")
    bad = {**manifest, "step_model": {**manifest["step_model"], "file": "other.onnx"}}
    (folder / contract.MANIFEST_FILE).write_text(json.dumps(bad))
    with pytest.raises(contract.ContractError, match="'step_model' must be"):
        make_engine(root, "wavenet")


def test_step_caches_follow_rows_through_compaction(step_registry):
    """A row's rings move with it when retiring rows leave holes (swap-remove), like its other columns."""
    engine = make_engine(step_registry, "wavenet", rows=64)
    engine.stop()
    rows = engine.scheduler.rows
    ring = engine.caches.columns[0]
    ring[:6] = np.arange(6, dtype=np.float32)[:, None, None]
    rows.sample_index[:6] = np.arange(6)
    rows.active = 6
    rows.keep(np.array([True, False, True, False, True, True]))
    assert rows.active == 4 and sorted(rows.sample_index[:4].tolist()) == [0, 2, 4, 5]
    assert ring[:4, 0, 0].tolist() == rows.sample_index[:4].tolist()
