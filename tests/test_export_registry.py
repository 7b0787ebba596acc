"""The registry folder: atomic publish under injected failures and kill -9, prune, rollback, list.

The registry does not look inside the model files, so these tests publish small files of their own.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, run_module
from export import registry
from namegen import contract
from export.registry import RegistryError


class Boom(Exception):
    pass


def _stage(root, name="mlp", val_nll=2.0):
    staging = registry.stage(root, name)
    for f in (contract.ONNX_FILE, contract.PT2_FILE, contract.TRAINING_NAMES_FILE):
        (staging.path / f).write_text(f"{f} of {staging.version}\n")
    manifest = {"version": staging.version, "model_type": "mlp", "calibrated": False,
                "metrics": {"train_nll": val_nll - 0.1, "val_nll": val_nll, "test_nll": val_nll + 0.01}}
    (staging.path / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    return staging


def _publish(root, name="mlp", val_nll=2.0, keep=None):
    return registry.publish(_stage(root, name, val_nll), keep=keep).name


def _assert_sound(root, name, latest):
    """LATEST names `latest`, which is complete, and no staging folder is left behind."""
    assert (root / name / "LATEST").read_text() == latest + "\n"
    assert registry.is_complete(root, name, latest)
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")]


def test_versions_sort_in_creation_order_and_latest_names_the_newest(tmp_path):
    published = [_publish(tmp_path) for _ in range(3)]
    assert registry.versions(tmp_path, "mlp") == published == sorted(published)
    assert len(set(published)) == 3
    assert all(contract.VERSION_PATTERN.fullmatch(v) for v in published)
    _assert_sound(tmp_path, "mlp", published[-1])
    assert oct((tmp_path / "mlp" / published[-1]).stat().st_mode & 0o777) == "0o755"  # readable by a server


@pytest.mark.parametrize("step", ["staged", "renamed"])
def test_a_failure_between_publish_steps_keeps_latest_on_a_complete_version(tmp_path, step):
    old = _publish(tmp_path)

    def fail(at):
        if at == step:
            raise Boom(at)

    staging = _stage(tmp_path)
    with pytest.raises(Boom):
        registry.publish(staging, _fault=fail)
    _assert_sound(tmp_path, "mlp", old)
    if step == "staged":  # nothing of the new version is visible
        assert registry.versions(tmp_path, "mlp") == [old]
    else:  # the new version is complete in place, but serving is still told to use the old one
        assert registry.versions(tmp_path, "mlp") == [old, staging.version]
        assert registry.is_complete(tmp_path, "mlp", staging.version)


_KILLED_PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from export import registry
    from namegen import contract
    root, step = Path(sys.argv[1]), sys.argv[2]
    staging = registry.stage(root, "mlp")
    for f in contract.VERSION_FILES:
        (staging.path / f).write_text("x" * 100000)
    def stall(at):
        if at == step:
            print(at, flush=True)
            time.sleep(60)
    registry.publish(staging, _fault=stall)
""")


@pytest.mark.parametrize("step", ["staged", "renamed"])
def test_kill_9_during_publish_never_breaks_latest(tmp_path, step):
    old = _publish(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISHER, str(tmp_path), step], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == step
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "mlp" / "LATEST").read_text() == old + "\n"
    assert registry.is_complete(tmp_path, "mlp", old)
    for version in registry.versions(tmp_path, "mlp"):  # whatever got in is whole
        assert registry.is_complete(tmp_path, "mlp", version)
    assert registry.rollback(tmp_path, "mlp", old)[1] == old  # and the registry still works


def test_an_incomplete_staging_folder_is_refused_and_removed(tmp_path):
    staging = _stage(tmp_path)
    (staging.path / contract.PT2_FILE).unlink()
    with pytest.raises(RegistryError, match="missing model.pt2"):
        registry.publish(staging)
    assert list(tmp_path.iterdir()) == []  # no staging folder, and no empty model folder either


def test_keep_prunes_the_oldest_but_never_latest(tmp_path):
    published = [_publish(tmp_path) for _ in range(4)]
    registry.rollback(tmp_path, "mlp", to=published[0])
    assert registry.prune(tmp_path, "mlp", keep=2) == published[1:2]
    assert registry.versions(tmp_path, "mlp") == [published[0], *published[2:]]
    newest = _publish(tmp_path, keep=1)
    assert registry.versions(tmp_path, "mlp") == [newest]
    _assert_sound(tmp_path, "mlp", newest)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trash")]


def test_rollback_steps_back_one_version_or_to_a_named_one(tmp_path):
    a, b, c = (_publish(tmp_path) for _ in range(3))
    assert registry.rollback(tmp_path, "mlp") == (c, b)
    assert registry.rollback(tmp_path, "mlp") == (b, a)
    with pytest.raises(RegistryError, match="no version older"):
        registry.rollback(tmp_path, "mlp")
    assert registry.rollback(tmp_path, "mlp", to=c) == (a, c)
    _assert_sound(tmp_path, "mlp", c)


def test_cli_list_and_rollback(tmp_path):
    a, b = _publish(tmp_path, val_nll=2.5), _publish(tmp_path, val_nll=2.25)
    _publish(tmp_path, "bigram-counts", val_nll=2.45)
    result = run_module("export", "rollback", "--registry", tmp_path, "--name", "mlp")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlp: LATEST {b} -> {a}"
    listing = run_module("export", "list", "--registry", tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0] == ["NAME", "VERSION", "TYPE", "TRAIN_NLL", "VAL_NLL", "TEST_NLL", "CALIBRATED", "LATEST"]
    assert [r[0] for r in rows[1:]] == ["bigram-counts", "mlp", "mlp"]
    assert rows[2][1] == a and rows[2][4] == "2.5000" and rows[2][-1] == "*"
    assert rows[3][1] == b and rows[3][4] == "2.2500" and rows[3][-1] == "no"


@pytest.mark.parametrize("args, message", [
    (["rollback", "--name", "mlp", "--to", "20200101T000000000000Z"], "mlp has no version 20200101T000000000000Z"),
    (["rollback", "--name", "mlp", "--to", "yesterday"], "not a version"),
    (["rollback", "--name", "nothing"], "no model named 'nothing'"),
    (["rollback", "--name", "Bad Name"], "model name 'Bad Name'"),
])
def test_cli_bad_rollback_is_one_line_and_exit_2(tmp_path, args, message):
    _publish(tmp_path)
    result = run_module("export", *args, "--registry", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr


def test_cli_registry_that_is_a_file_is_one_line_and_exit_2(tmp_path):
    not_a_folder = tmp_path / "registry"
    not_a_folder.write_text("")
    for args in (["list", "--registry", not_a_folder], ["rollback", "--registry", not_a_folder, "--name", "mlp"]):
        result = run_module("export", *args)
        assert result.returncode == 2 and result.stderr == f"error: registry {not_a_folder}: is a file, not a folder\n"


def test_cli_export_into_a_registry_it_cannot_create_is_one_line_and_exit_2(tmp_path, trained_checkpoints):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_module("export", trained_checkpoints["mlp"], "--registry", blocker / "registry", "--name", "mlp")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {blocker / 'registry'}: Not a directory"), result.stderr


def test_registry_does_not_import_torch():
    code = "import sys, export.cli, export.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ})
    assert result.stdout.strip() == "False", result.stderr


def test_the_next_export_removes_what_a_killed_one_left_but_never_a_live_ones(tmp_path):
    old = _publish(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PUBLISHER, str(tmp_path), "staged"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    live = registry.stage(tmp_path, "mlp")  # another export, writing now, while the first one stalls
    assert len([p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".staging-")]) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp_path / ".trash-mlp-x-1234").mkdir()  # a prune killed halfway through deleting
    (tmp_path / "mlp" / ".LATEST.abc.tmp").write_text(old)
    os.utime(tmp_path / "mlp" / ".LATEST.abc.tmp", (0, 0))  # long ago
    removed = registry.remove_leftovers(tmp_path)
    assert len(removed) == 3 and ".trash-mlp-x-1234" in removed and "mlp/.LATEST.abc.tmp" in removed
    assert live.path.is_dir()  # its writer is alive: untouched
    registry.discard(live)
    _assert_sound(tmp_path, "mlp", old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp"] and sorted(os.listdir(tmp_path / "mlp")) == \
        sorted([old, "LATEST"])
