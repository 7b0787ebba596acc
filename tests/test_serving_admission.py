"""The admission line in process: requests that find a real engine's queue full wait in turn, give up with
QueueFull after their wait, and leave nothing of theirs behind once the line is empty."""
import asyncio
import time

import pytest

from serving.api.admission import _gates, submit_when_room
from serving.engine import Engine, QueueFull, SamplingParams
from serving.model import load_version
from namegen.contract import MAX_NAME_LENGTH, read_latest
from serving.settings import Settings


@pytest.fixture
def full_engine(served_registry):
    """An engine with one row and room for one queued request, both taken by long requests."""
    settings = Settings(registry=served_registry, threads=1, max_batch_rows=1)
    model = load_version(settings, "mlp", read_latest(served_registry, "mlp"))
    engine = Engine(model, 1, max_queue=1, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20)
    held = []
    for seed in range(50):  # one holds the row once the engine thread launches it, the next fills the queue
        try:
            held.append(engine.submit(SamplingParams(n=200_000, seed=seed), lambda result: None))
        except QueueFull:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the queue never filled")
    yield engine
    for request in held:
        request.cancel()
    engine.stop(drain=False)


def test_waiters_that_time_out_get_queue_full_and_leave_an_empty_line(full_engine):
    async def line_up():
        submit = lambda: full_engine.submit(SamplingParams(n=1, seed=4), lambda result: None)  # noqa: E731
        return await asyncio.gather(*(submit_when_room(full_engine, submit, 0.05) for _ in range(20)),
                                    return_exceptions=True)

    outcomes = asyncio.run(line_up())
    assert all(isinstance(o, QueueFull) and "no room came within 0.05 s" in str(o) for o in outcomes), outcomes
    gate = _gates[full_engine]
    assert gate.waiting == 0 and not gate.waiters  # no dead waiter is kept once nobody is in line
