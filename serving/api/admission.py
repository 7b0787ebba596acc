"""Waiting for room in a full queue. Under overload, a request that finds its engine's queue full waits
here, in arrival order, until a request leaves that queue or its admission wait runs out (then 429):
clients that ask again at once are held instead of refused thousands of times a second, and nothing
polls, so refusing costs little of the server's one busy core."""
from __future__ import annotations

import asyncio
import weakref
from collections import deque

from ..engine import Engine, QueueFull


class AdmissionGate:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiters: deque[asyncio.Future] = deque()  # in line; done ones are skipped
        self.waiting = 0  # of them not done

    def room(self) -> None:
        """A request left the queue (called on the engine thread)."""
        if self.waiting:
            self.loop.call_soon_threadsafe(self.wake_next)

    def wake_next(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


_gates: weakref.WeakKeyDictionary[Engine, AdmissionGate] = weakref.WeakKeyDictionary()


async def submit_when_room(engine: Engine, submit, wait_s: float):
    """submit() now if nobody is in line, else in turn once room frees; QueueFull after wait_s."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(engine)
    if gate is None:
        gate = _gates[engine] = AdmissionGate(loop)
        engine.scheduler.on_room = gate.room
    refused = QueueFull("requests before it are waiting for room")
    if not gate.waiting:
        try:
            return submit()
        except QueueFull as e:
            if wait_s <= 0:
                raise
            refused = e
    deadline, woken = loop.time() + wait_s, False
    while True:
        # In line before trying again, so room freed meanwhile wakes this one; one woken before (and
        # beaten to the room) keeps its place at the head.
        waiter = loop.create_future()
        (gate.waiters.appendleft if woken else gate.waiters.append)(waiter)
        gate.waiting += 1
        try:
            if woken:
                try:
                    return submit()
                except QueueFull as e:
                    refused = e
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as e:  # out of time, or its client went away
            if waiter.done() and not waiter.cancelled():  # woken as it leaves: the room is the next one's
                gate.wake_next()
            if isinstance(e, TimeoutError):
                raise QueueFull(f"{refused}, and no room came within {wait_s:g} s") from None
            raise
        finally:
            gate.waiting -= 1
            waiter.cancel()
            if not gate.waiting:  # the line is empty: drop what it still holds of those who left
                gate.waiters.clear()
        woken = True
