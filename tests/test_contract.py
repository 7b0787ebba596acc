"""The artifact contract (namegen.contract): what a registry entry must be, and that serving holds every
model to it on its own, so one broken entry never stops the others."""
import json
import logging
import shutil

import pytest

from namegen import contract
from namegen.contract import ContractError, read_latest, validate_manifest, verify_files, write_latest
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings

VERSION = "20261122T004501123456Z"


def test_latest_round_trips_and_missing_is_none(tmp_path):
    (tmp_path / "mlp").mkdir()
    assert read_latest(tmp_path, "mlp") is None and read_latest(tmp_path, "nothing") is None
    write_latest(tmp_path, "mlp", VERSION)
    assert (tmp_path / "mlp" / "LATEST").read_text() == VERSION + "\n"
    assert read_latest(tmp_path, "mlp") == VERSION
    assert [p.name for p in (tmp_path / "mlp").iterdir()] == ["LATEST"]  # no temporary file left behind
    with pytest.raises(ContractError):
        write_latest(tmp_path, "mlp", "../other/" + VERSION)


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00garbage", "not ASCII"),
    (VERSION[:9].encode(), "is not a version"),  # truncated
    (b"", "is not a version"),
    (f"../bigram-counts/{VERSION}".encode(), "is not a version"),  # never followed out of its model's folder
    (b"2" * 300, "over 256 bytes"),
])
def test_latest_that_is_not_a_version_name_is_refused_naming_the_file(tmp_path, content, words):
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "LATEST").write_bytes(content)
    with pytest.raises(ContractError, match=words) as error:
        read_latest(tmp_path, "mlp")
    assert str(tmp_path / "mlp" / "LATEST") in str(error.value)


SEXES = {"conditions": [{"name": "sex", "values": ["F", "M"]}],
         "condition_prior": [{"values": ["F"], "p": 0.5}, {"values": ["M"], "p": 0.5}]}


def good_manifest(**changes):
    manifest = {"format": "namegen.model", "version": VERSION, "model_type": "mlp", "vocab": list(".abc"),
                "block_size": 3, "files": {"model.onnx": "0" * 64, "training_names.txt": "1" * 64},
                "training_names": "training_names.txt", "metrics": {"val_nll": 2.1}}
    manifest.update(changes)
    return {k: v for k, v in manifest.items() if v is not None}


@pytest.mark.parametrize("changes, words", [
    ({"block_size": "three"}, "'block_size' must be an integer"),
    ({"block_size": True}, "'block_size' must be an integer"),
    ({"block_size": 10**6}, "'block_size' must be an integer from 1 to 1024"),
    ({"vocab": ".ab"}, "'vocab' must be a list"),
    ({"vocab": [".", "a", "a"]}, "distinct"),
    ({"vocab": [".", "ab"]}, "single characters"),
    ({"model_type": None}, "missing 'model_type'"),
    ({"format": "other"}, "not a namegen model manifest"),
    ({"files": ["model.onnx"]}, "'files' must map"),
    ({"training_names": "elsewhere.txt"}, "'training_names' must name a file listed"),
    ({"metrics": {"val_nll": "low"}}, "'metrics' must map names to numbers"),
    ({"guidance": 2.0}, "'guidance' must be a number from 0 to 20, and only a conditional model's"),
    ({**SEXES, "guidance": 25}, "'guidance' must be a number from 0 to 20"),
    ({**SEXES, "guidance": "2"}, "'guidance' must be a number"),
    ({**SEXES, "guidance": True}, "'guidance' must be a number"),
])
def test_manifest_with_a_wrong_type_or_missing_key_is_refused_naming_the_key(changes, words):
    with pytest.raises(ContractError, match=words):
        validate_manifest(good_manifest(**changes), "here/manifest.json")
    manifest = validate_manifest(good_manifest(), "here/manifest.json")
    assert manifest.vocab == (".", "a", "b", "c") and manifest.block_size == 3 and manifest.metrics == {"val_nll": 2.1}
    assert manifest.guidance == 0.0
    assert validate_manifest(good_manifest(**SEXES, guidance=3), "here/manifest.json").guidance == 3.0


def test_every_file_serving_loads_must_be_listed_inside_the_folder_and_match(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    outside = tmp_path / "outside.txt"
    outside.write_text("emma\n")
    (folder / "training_names.txt").symlink_to(outside)
    manifest = validate_manifest(good_manifest(files={"model.onnx": contract.sha256_file(folder / "model.onnx"),
                                                      "training_names.txt": contract.sha256_file(outside)}), "m")
    verify_files(folder, manifest, ["model.onnx"])
    with pytest.raises(ContractError, match="not a file inside its version folder"):
        verify_files(folder, manifest, ["training_names.txt"])
    with pytest.raises(ContractError, match="model.pt2 is not listed"):
        verify_files(folder, manifest, ["model.pt2"])
    (folder / "model.onnx").write_bytes(b"weightz")
    with pytest.raises(ContractError, match="sha256 differs"):
        verify_files(folder, manifest, ["model.onnx"])


def test_export_writes_manifests_that_the_contract_accepts(served_registry):
    for name in contract.model_names(served_registry):
        version = read_latest(served_registry, name)
        manifest = contract.read_manifest(served_registry / name / version)
        assert manifest.version == version and set(contract.VERSION_FILES) - {contract.MANIFEST_FILE} <= \
            set(manifest.files)


@pytest.mark.parametrize("latest", [b"\xff\xfe\x00 not text", b"2026112"])
def test_a_broken_latest_on_one_model_never_stops_the_others_refreshing(served_registry, tmp_path, caplog,
                                                                       trained_checkpoints, latest):
    from export.pipeline import export_checkpoint

    root = tmp_path / "registry"
    shutil.copytree(served_registry, root)
    metrics = Metrics()
    manager = ModelManager(Settings(registry=root), metrics)
    try:
        assert {r["status"] for r in manager.refresh().values()} == {"loaded"}
        (root / "bigram-counts" / "LATEST").write_bytes(latest)
        new = export_checkpoint(trained_checkpoints["mlp"], root, name="mlp").manifest["version"]
        with caplog.at_level(logging.ERROR, logger="namegen.manager"):
            results = [manager.refresh() for _ in range(3)]
        assert results[0]["mlp"] == {"status": "loaded", "version": new}  # the other model moved on
        assert all(r["bigram-counts"]["status"] == "rejected" and "LATEST" in r["bigram-counts"]["error"]
                   for r in results)
        assert manager.get("bigram-counts").model.version == read_latest(served_registry, "bigram-counts")
        assert len([r for r in caplog.records if "bigram-counts" in r.getMessage()]) == 1  # said once, not per poll
        assert metrics.reload_failures.labels("bigram-counts")._value.get() == 1
    finally:
        manager.close()


def test_a_manifest_with_a_wrong_type_is_rejected_while_other_models_load(served_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(served_registry, root)
    version_dir = root / "bigram-counts" / read_latest(root, "bigram-counts")
    manifest = json.loads((version_dir / "manifest.json").read_text())
    (version_dir / "manifest.json").write_text(json.dumps({**manifest, "block_size": "three"}))
    manager = ModelManager(Settings(registry=root), Metrics())
    try:
        results = manager.refresh()
        assert results["mlp"]["status"] == "loaded"
        assert results["bigram-counts"]["status"] == "rejected" and "'block_size'" in results["bigram-counts"]["error"]
    finally:
        manager.close()
