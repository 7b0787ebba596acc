"""Shared fixtures: a small real name list, paths to the shared names.txt, a CLI runner."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_NAMES = ROOT.parent / "shared" / "data" / "names.txt"


def run_module(module: str, *args, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def interrupt_training(args, out: Path, timeout: float = 120, command: str = "train") -> str:
    """`python -m training COMMAND ARGS --out OUT` stopped with Ctrl-C once its first checkpoint is written;
    checks it exits 130 and returns its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "training", command, *map(str, args), "--out", str(out)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 130, stderr
    return stderr


def apt_install(packages: list[str], missing: list[str]) -> None:
    """Debian packages from apt-get, for a test that needs what `missing` names; the test is skipped,
    saying why, where they cannot be installed (no root, no apt-get)."""
    if os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing)} not installed, and installing them needs root")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(missing)} not installed, and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for command, timeout in ((["update", "-q"], 600), (["install", "-y", "-q", *packages], 900)):
        done = subprocess.run(["apt-get", *lock, *command], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def ssa_words() -> list[str]:
    from training.data import load_ssa_names

    return load_ssa_names(2017)


@pytest.fixture(scope="session")
def small_names_file(tmp_path_factory, ssa_words) -> Path:
    """2,000 real names (every 16th SSA 2017 record): enough to learn something in seconds."""
    path = tmp_path_factory.mktemp("data") / "names.txt"
    path.write_text("\n".join(ssa_words[::16]) + "\n")
    return path


@pytest.fixture(scope="session")
def shared_names() -> Path:
    if not SHARED_NAMES.is_file():
        pytest.skip("../shared/data/names.txt is absent")
    return SHARED_NAMES


# -- a real registry and real servers --------------------------------------------------------------
import re  # noqa: E402
import threading  # noqa: E402

import httpx  # noqa: E402

TINY_MLP = dict(n_embd=8, n_hidden=64)


@pytest.fixture(scope="session")
def trained_checkpoints(tmp_path_factory, small_names_file) -> dict[str, Path]:
    """A tiny mlp and a bigram-counts model trained on the small names file."""
    from training.data import Dataset, load_names_file
    from training.models import ModelConfig
    from training.train import TRAIN_DEFAULTS, TrainConfig, train

    root = tmp_path_factory.mktemp("checkpoints")
    data = Dataset.from_words(load_names_file(small_names_file), str(small_names_file))
    train(ModelConfig("mlp", data.vocab.size, **TINY_MLP),
          TrainConfig(steps=400, batch_size=64, lr=3e-3, optimizer="adamw", seed=1), data, root / "mlp", progress=False)
    train(ModelConfig("bigram-counts", data.vocab.size), TRAIN_DEFAULTS["bigram-counts"], data, root / "bigram",
          progress=False)
    return {"mlp": root / "mlp", "bigram-counts": root / "bigram"}


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory, trained_checkpoints) -> Path:
    """Both checkpoints exported for real (parity checked) into a fresh registry."""
    from export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("registry")
    for name, checkpoint in trained_checkpoints.items():
        export_checkpoint(checkpoint, root, name=name)
    return root


@pytest.fixture(scope="session")
def tiny_wavenet(small_names_file, tmp_path_factory):
    """A tiny wavenet trained for 300 steps: (checkpoint folder, its metadata)."""
    from training.data import Dataset, load_names_file
    from training.models import ModelConfig
    from training.train import TrainConfig, train

    data = Dataset.from_words(load_names_file(small_names_file), str(small_names_file))
    out = tmp_path_factory.mktemp("wavenet") / "ck"
    meta = train(ModelConfig("wavenet", data.vocab.size, block_size=8, n_embd=8, n_hidden=32),
                 TrainConfig(steps=300, batch_size=64, lr=3e-3, optimizer="adamw"), data, out, progress=False)
    return out, meta


class ServerProcess:
    """`python -m serving` on an ephemeral 127.0.0.1 port; its log is kept for assertions."""

    def __init__(self, registry: Path, **env):
        settings = {"NAMEGEN_REGISTRY": str(registry), "NAMEGEN_HOST": "127.0.0.1", "NAMEGEN_PORT": "0",
                    "NAMEGEN_WATCH_INTERVAL_S": "0.2", "NAMEGEN_LOG_LEVEL": "info"}
        settings.update({f"NAMEGEN_{k.upper()}": str(v) for k, v in env.items()})
        self.process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env={**os.environ, **settings})
        self.log: list[str] = []
        self._port = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._port.wait(60):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))

    def _read_log(self):
        for line in self.process.stdout:
            self.log.append(line)
            match = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                self._port.set()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/readyz").status_code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("server not ready:\n" + "".join(self.log))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture
def start_server():
    """Start servers with settings of the test's choosing; all are stopped afterwards."""
    started = []

    def start(registry: Path, ready: bool = True, **env) -> ServerProcess:
        server = ServerProcess(registry, **env)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server(served_registry):
    """A real server with the tiny mlp (default) and bigram-counts; its URL."""
    server = ServerProcess(served_registry)
    server.wait_ready()
    yield server.url
    server.stop()


# -- conditional models (sex, decade) ------------------------------------------------------------------
TINY_CONDITIONAL = dict(n_embd=8, n_hidden=64, block_size=2)  # 27**2 contexts x 3 x 3 conditions: a small table


@pytest.fixture(scope="session")
def records_file(tmp_path_factory) -> Path:
    """name,sex,decade CSV: every 12th SSA record (one per distinct name, sex, decade) of the 1920s and 2010s."""
    from training.conditions import load_ssa_records

    rows = ["name,sex,decade"]
    for first, last in ((1920, 1929), (2010, 2017)):
        names, labels = load_ssa_records(first, last)
        rows += [f"{name},{sex},{decade}" for name, (sex, decade) in list(zip(names, labels))[::12]]
    path = tmp_path_factory.mktemp("records") / "records.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def conditional_checkpoint(tmp_path_factory, records_file) -> Path:
    """A tiny mlp conditioned on sex and decade, trained on records_file."""
    from training.conditions import load_dataset
    from training.models import ModelConfig
    from training.train import TrainConfig, train

    data = load_dataset(str(records_file), None, ("sex", "decade"))
    out = tmp_path_factory.mktemp("conditional") / "mlp-conditional"
    train(ModelConfig("mlp", data.vocab.size, conditions=data.conditions.sizes, **TINY_CONDITIONAL),
          TrainConfig(steps=500, batch_size=64, lr=3e-3, optimizer="adamw", seed=1, eval_every=500), data, out,
          progress=False)
    return out


@pytest.fixture(scope="session")
def conditional_registry(tmp_path_factory, conditional_checkpoint, trained_checkpoints) -> Path:
    """The tiny conditional mlp and the tiny unconditional mlp, exported (parity checked) into one registry."""
    from export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("conditional-registry")
    export_checkpoint(conditional_checkpoint, root, name="mlp-conditional")
    export_checkpoint(trained_checkpoints["mlp"], root, name="mlp")
    return root


# -- real containers (podman), shared by test_compose.py and test_k8s_pods.py: the images are built once ------
import containers  # noqa: E402


@pytest.fixture(scope="session")
def container_tools() -> float:
    """podman, runc, docker-compose and debootstrap, from Debian's apt where missing; the seconds it took."""
    started = time.monotonic()
    missing = [tool for tool in containers.TOOLS if shutil.which(tool) is None]
    if not missing:
        return 0.0
    apt_install(list(containers.TOOLS), missing)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def podman(container_tools, tmp_path_factory):
    """podman with our containers.conf, and its Docker-compatible API on a socket of our own (for
    docker-compose), stopped by its PID. Prints the time of each container phase at the end."""
    if os.geteuid() != 0:
        pytest.skip("rootful podman: needs root")
    phases = containers.Phases(container_tools)
    work = tmp_path_factory.mktemp("podman")
    (work / "containers.conf").write_text(containers.CONTAINERS_CONF)
    env = {**containers.clean_environ(), "CONTAINERS_CONF": str(work / "containers.conf"),
           "DOCKER_HOST": f"unix://{work / 'podman.sock'}",
           "COMPOSE_DOCKER_CLI_BUILD": "0"}  # docker-compose builds through the API, no docker CLI needed
    service = containers.start_podman_service(env, work)
    phases.done("podman system service")
    try:
        yield containers.Podman(env, phases)
    finally:
        containers.stop_process(service)
        print(f"container test phases:\n{phases.report()}")


@pytest.fixture(scope="session")
def base_image(podman):
    """No registry to pull from: the debootstrap root file system, imported as an image."""
    name = f"localhost/namegen-test-base:{os.getpid()}"
    containers.import_base_image(podman, containers.debootstrap_rootfs(), name)
    podman.phases.done("base image: debootstrap unless cached, import")
    yield name
    podman("rmi", name, check=False)


@pytest.fixture(scope="session")
def container_images(podman, base_image):
    """serve, train and lb built once from this checkout by `docker-compose build`; removed at the end,
    with whatever the builds left untagged and the torch wheel copied into deploy/wheelhouse."""
    images = containers.Images(podman, base_image)
    images_before = set(podman.lines("images", "-a", "-q", "--no-trunc"))
    added_wheels = containers.torch_into_wheelhouse()
    try:
        images.build()
        podman.phases.done("build serve, train, lb images")
        yield images
    finally:
        images.remove(images_before)
        for wheel in added_wheels:
            wheel.unlink(missing_ok=True)
        podman.phases.done("remove the images")
