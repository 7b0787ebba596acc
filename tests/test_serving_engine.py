"""The engine in process: batch-invariant seeds, prefix stability, backends agreeing, no torch by default."""
import random
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT
from serving.engine import Engine, SamplingParams
from serving.model import load_version
from namegen.contract import MAX_NAME_LENGTH, read_latest
from serving.settings import Settings


def make_engine(registry, name="mlp", max_batch_rows=4096, threads=2, backend="onnxruntime", chunk=1024,
                table_mb=32.0, max_active_requests=0):
    settings = Settings(registry=registry, threads=threads, max_batch_rows=max_batch_rows, backend=backend,
                        forward_chunk_rows=chunk, logits_table_mb=table_mb)
    model = load_version(settings, name, read_latest(registry, name))
    return Engine(model, max_batch_rows, max_queue=10_000, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20,
                  max_active_requests=max_active_requests)


def named(result):
    return list(zip(result.names, result.nlls, strict=True))


SEEDED = [SamplingParams(n=60, seed=5), SamplingParams(n=30, seed=6, temperature=0.7, top_k=6),
          SamplingParams(n=20, seed=7, prefix="ja", unique=True, min_length=4, max_length=9),
          SamplingParams(n=25, seed=8, exclude_training=True, unique=True)]


def mixed_run(engine, seeded, noise_requests=40):
    """Seeded requests submitted in the middle of random traffic; returns their names in order."""
    rng = random.Random(0)
    noise = [SamplingParams(n=rng.randint(1, 300), seed=rng.randrange(2**63), temperature=rng.choice([0.5, 1.0, 1.5]),
                            prefix=rng.choice(["", "a", "mar"]), unique=rng.random() < 0.3)
             for _ in range(noise_requests)]
    return mixed_run_of(engine, seeded, noise)


def mixed_run_of(engine, seeded, noise):
    """The seeded requests submitted among the noise ones in a shuffled order; the seeded ones' names."""
    noise_requests = len(noise)
    results = {}
    done = threading.Event()
    pending = [len(seeded) + noise_requests]
    lock = threading.Lock()

    def finish(key):
        def record(result):
            results[key] = result
            with lock:
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()
        return record

    order = [("seeded", i) for i in range(len(seeded))] + [("noise", i) for i in range(noise_requests)]
    random.Random(0).shuffle(order)
    for kind, i in order:
        engine.submit(seeded[i] if kind == "seeded" else noise[i], finish((kind, i)))
    assert done.wait(300)
    return [named(results[("seeded", i)]) for i in range(len(seeded))]


def mismatches(alone, mixed) -> tuple[int, int]:
    """(names that differ, names compared) between each request's answer alone and in a mixed run; a
    missing or extra name counts as a difference."""
    differ = sum(sum(a != b for a, b in zip(solo, together)) + abs(len(solo) - len(together))
                 for solo, together in zip(alone, mixed))
    return differ, sum(len(solo) for solo in alone)


def test_seeded_requests_are_identical_alone_or_mixed_for_any_batch_rows_and_threads(served_registry):
    # The reference computes every forward; half the mixed runs look logits up in the precomputed table.
    reference_engine = make_engine(served_registry, max_batch_rows=4096, threads=1, table_mb=0)
    assert reference_engine.runner.logits_table is None and reference_engine.runner.table is None
    alone = [named(reference_engine.generate(p)) for p in SEEDED]
    reference_engine.stop()
    mismatched = total = 0
    for rows, threads, table_mb in [(1, 1, 0), (7, 2, 32), (100, 2, 0), (4096, 2, 32)]:
        engine = make_engine(served_registry, max_batch_rows=rows, threads=threads, table_mb=table_mb)
        assert (engine.runner.table is not None) == (table_mb > 0)
        differ, compared = mismatches(alone, mixed_run(engine, SEEDED, noise_requests=8 if rows == 1 else 40))
        engine.stop()
        mismatched, total = mismatched + differ, total + compared
    assert total > 500
    assert mismatched == 0, f"{mismatched} of {total} names differ"  # names and their NLLs, exactly


CONDITIONED = [SamplingParams(n=60, seed=5, conditions=(("sex", "F"),)),
               SamplingParams(n=60, seed=5, conditions=(("sex", "M"), ("decade", "1920"))),
               SamplingParams(n=40, seed=5),  # any sex, any decade
               SamplingParams(n=30, seed=9, temperature=0.7, top_k=6, prefix="ma", conditions=(("decade", "2010"),)),
               SamplingParams(n=25, seed=8, exclude_training=True, unique=True, conditions=(("sex", "F"),)),
               SamplingParams(n=50, seed=5, conditions=(("sex", "F"),), guidance=0.0),  # unguided
               SamplingParams(n=50, seed=5, conditions=(("sex", "F"),), guidance=6.5)]


def mixed_conditions_run(engine):
    """CONDITIONED among random traffic of random conditions: their answers, in order."""
    rng = random.Random(1)
    noise = [SamplingParams(n=rng.randint(1, 200), seed=rng.randrange(2**63),
                            conditions=tuple(pair for pair in (("sex", rng.choice(["F", "M", None])),
                                                               ("decade", rng.choice(["1920", "2010", None])))
                                             if pair[1]), guidance=rng.choice([None, 0.0, 1.5]))
             for _ in range(30)]
    return mixed_run_of(engine, CONDITIONED, noise)


def test_seeded_requests_with_mixed_conditions_are_identical_alone_or_batched(conditional_registry):
    # Rows of different conditions share every step; a row's names depend on its own request only.
    reference = make_engine(conditional_registry, name="mlp-conditional", threads=1, table_mb=0)
    alone = [named(reference.generate(p)) for p in CONDITIONED]
    reference.stop()
    assert alone[0] != alone[1] != alone[2]  # same seed, other conditions, other names
    assert alone[0] != alone[5] != alone[6]  # the model's default guidance (3), none, and 6.5 differ
    # The NLL stays the model's under the conditions, guided or not: the same name scores the same.
    scored = {name: nll for name, nll in alone[5]}
    assert all(abs(scored[name] - nll) < 1e-9 for name, nll in alone[0] + alone[6] if name in scored)
    for rows, threads, table_mb in [(5, 1, 0), (100, 2, 64), (4096, 2, 0), (4096, 2, 64)]:
        engine = make_engine(conditional_registry, name="mlp-conditional", max_batch_rows=rows, threads=threads,
                             table_mb=table_mb)
        assert (engine.runner.table is not None) == (table_mb > 0)
        together = mixed_conditions_run(engine)
        engine.stop()
        assert together == alone, f"rows {rows}, threads {threads}, table {table_mb} MB"


def test_logits_table_matches_the_forward_and_respects_its_budget(served_registry):
    def load(table_mb):
        settings = Settings(registry=served_registry, threads=2, logits_table_mb=table_mb)
        return load_version(settings, "mlp", read_latest(served_registry, "mlp"))

    computed, tabled = load(0), load(32)
    assert tabled.runner.logits_table.shape == (tabled.vocab_size ** 3, tabled.vocab_size)
    names = sorted(tabled.training_names)[:500]
    assert [a.tolist() for a in computed.token_logp(names)] == [a.tolist() for a in tabled.token_logp(names)]
    too_small = 27**3 * 27 * 4 - 1
    assert not computed.runner.tabulate(too_small) and computed.runner.logits_table is None
    # The budget covers the logits and the sampler's view of them, as measured on the loaded arrays.
    def owners(arrays):  # the buffers the arrays live in, each once (some attributes are views)
        roots = {}
        for a in arrays:
            while a.base is not None:
                a = a.base
            roots[id(a)] = a
        return roots.values()

    view = [a for a in vars(tabled.runner.table).values() if isinstance(a, np.ndarray)]
    used = sum(a.nbytes for a in owners([tabled.runner.logits_table, *view]))
    just_short, enough = load((used - 1) / 2**20), load(used / 2**20)
    assert just_short.runner.table is None and enough.runner.table is not None
    for model in (computed, tabled, just_short, enough):
        model.close()


def test_chunks_take_the_largest_checked_shapes_and_pad_only_the_last_few_rows(served_registry):
    settings = Settings(registry=served_registry, threads=2, forward_chunk_rows=2048, logits_table_mb=0)
    model = load_version(settings, "mlp", read_latest(served_registry, "mlp"))
    backend = model.runner.backend
    assert backend.shapes == [2048, 1024, 512, 256, 128, 64]  # every shape passed the load-time check here
    for rows in (1, 63, 64, 65, 1000, 2047, 2048, 4096, 4095, 5000):
        plan = backend.chunks(rows)
        assert [start for start, _, _ in plan] == [0] + [stop for _, stop, _ in plan[:-1]]  # contiguous
        assert plan[-1][1] == rows and all(shape in backend.shapes for _, _, shape in plan)
        padded = [shape - (stop - start) for start, stop, shape in plan]
        assert padded[:-1] == [0] * (len(plan) - 1) and padded[-1] < 64  # only the last chunk, fewer than 64 rows
        assert [shape for _, _, shape in plan] == sorted((shape for _, _, shape in plan), reverse=True)
    assert {shape for _, _, shape in backend.chunks(backend.probe_rows)} == set(backend.shapes)  # probes take them all
    model.close()


def test_one_request_at_a_time_holds_rows_of_one_request_and_gives_the_same_names(served_registry):
    # NAMEGEN_MAX_ACTIVE_REQUESTS=1, the HTTP benchmark's baseline: requests wait their turn whole.
    reference = make_engine(served_registry)
    alone = [named(reference.generate(p)) for p in SEEDED]
    reference.stop()
    engine = make_engine(served_registry, max_batch_rows=16, max_active_requests=1)
    holders = []
    engine.on_step = lambda n: holders.append(len(set(engine.rows.request[:n].tolist())))  # on the engine thread
    assert mixed_run(engine, SEEDED, noise_requests=10) == alone
    engine.stop()
    assert holders and max(holders) == 1


def test_first_k_names_of_2k_equal_the_k_names(served_registry):
    engine = make_engine(served_registry, max_batch_rows=64)
    for params in SEEDED:
        k = params.n
        short = named(engine.generate(params))
        double = named(engine.generate(SamplingParams(**{**params.__dict__, "n": 2 * k})))
        assert double[:k] == short
    engine.stop()


def test_prefix_is_kept_and_stable(served_registry):
    engine = make_engine(served_registry)
    names = named(engine.generate(SamplingParams(n=50, seed=3, prefix="el")))
    assert all(name.startswith("el") for name, _ in names)
    assert named(engine.generate(SamplingParams(n=50, seed=3, prefix="el"))) == names
    engine.stop()


def test_impossible_filters_exhaust_the_budget_instead_of_hanging(served_registry):
    engine = make_engine(served_registry)
    result = engine.generate(SamplingParams(n=5, seed=1, temperature=0, unique=True), timeout=60)
    assert len(result.names) == 1 and result.exhausted  # greedy yields one name only
    engine.stop()


def test_onnxruntime_and_torch_backends_agree(served_registry):
    params = [SamplingParams(n=1000, seed=s) for s in (1, 2, 3)]
    ort_engine = make_engine(served_registry, backend="onnxruntime")
    torch_engine = make_engine(served_registry, backend="torch")
    ort_names = [name for p in params for name in ort_engine.generate(p).names]
    torch_names = [name for p in params for name in torch_engine.generate(p).names]
    ort_engine.stop()
    torch_engine.stop()
    agreement = sum(a == b for a, b in zip(ort_names, torch_names)) / len(ort_names)
    assert len(ort_names) == 3000 and agreement >= 0.999, agreement


def test_onnxruntime_serving_never_imports_torch(served_registry):
    script = f"""
import sys
from fastapi.testclient import TestClient
from serving.app import create_app
from serving.settings import Settings
with TestClient(create_app(Settings(registry={str(served_registry)!r}))) as client:
    assert client.post("/v1/generate", json={{"n": 5, "seed": 1}}).status_code == 200
    assert client.post("/v1/score", json={{"names": ["emma"]}}).status_code == 200
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_cuda_without_a_gpu_fails_at_start_with_one_line(served_registry):
    for backend in ("onnxruntime", "torch"):
        result = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env={**__import__("os").environ, "NAMEGEN_REGISTRY": str(served_registry),
                                                  "NAMEGEN_DEVICE": "cuda", "NAMEGEN_BACKEND": backend})
        assert result.returncode == 2
        assert result.stderr.startswith("error: NAMEGEN_DEVICE=cuda") and len(result.stderr.splitlines()) == 1


def test_bad_setting_fails_at_start_with_one_line():
    result = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**__import__("os").environ, "NAMEGEN_MAX_BATCH_ROWS": "zero"})
    assert result.returncode == 2 and "NAMEGEN_MAX_BATCH_ROWS" in result.stderr


@pytest.mark.parametrize("name", ["bigram-counts"])
def test_bigram_model_generates_through_the_same_engine(served_registry, name):
    engine = make_engine(served_registry, name=name)
    result = engine.generate(SamplingParams(n=100, seed=4))
    assert len(result.names) == 100 and all(nll > 0 for nll in result.nlls)
    engine.stop()


def test_tiny_temperatures_are_greedy_not_empty(served_registry):
    engine = make_engine(served_registry)
    greedy = named(engine.generate(SamplingParams(n=3, seed=1, temperature=0)))
    for temperature in (5e-324, 1e-300, 1e-40):
        assert named(engine.generate(SamplingParams(n=3, seed=1, temperature=temperature))) == greedy
    engine.stop()


def test_engine_refuses_parameters_it_cannot_hold(served_registry):
    engine = make_engine(served_registry)
    for bad in (SamplingParams(n=1, seed=1, prefix="A"), SamplingParams(n=1, seed=1, top_k=2**63),
                SamplingParams(n=1, seed=1, max_length=65)):
        with pytest.raises(ValueError):
            engine.submit(bad, lambda result: None)
    assert len(engine.generate(SamplingParams(n=2, seed=1)).names) == 2  # nothing else was disturbed
    engine.stop()


def test_onnxruntime_and_torch_backends_agree_on_a_conditional_model(conditional_registry):
    names = []  # the two runtimes round differently: the names agree, their NLLs to float32's precision
    for backend in ("onnxruntime", "torch"):
        engine = make_engine(conditional_registry, name="mlp-conditional", backend=backend, table_mb=0)
        names.append([name for params in CONDITIONED[:3] for name in engine.generate(params).names])
        engine.stop()
    agreement = sum(a == b for a, b in zip(*names)) / len(names[0])
    assert len(names[0]) == 160 and agreement >= 0.99, agreement
