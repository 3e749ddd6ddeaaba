"""The daemon's side of a child: its loop never waits on a child's pipe, and a child's death is said once."""

from __future__ import annotations

import threading
import time

from finetuned.processes.handle import OUTBOX_LIMIT, ChildHandle
from finetuned.processes.protocol import Ask, Ready


def _big_ask(i: int) -> Ask:
    # The monitor's largest question: a system prompt and a prompt of 4,000 four-byte characters each.
    text = "𝄞" * 4000
    return Ask(id=f"q{i}", messages=({"role": "system", "content": text}, {"role": "user", "content": text}),
               max_new_tokens=8, seconds=1.0)


def _wait_ready(child: ChildHandle) -> None:
    deadline = time.monotonic() + 60
    while not any(isinstance(r, Ready) for r in child.receive()):
        assert child.alive() and time.monotonic() < deadline, child.exit_reason()
        time.sleep(0.05)


def test_sending_to_a_child_that_reads_nothing_never_blocks_the_sender(tmp_path):
    """A worker inside a long step reads no order: 60 of the largest questions (about 2 MB, far past a pipe's
    buffer) are taken at once, and past OUTBOX_LIMIT the handle says no instead of waiting."""
    child = ChildHandle(str(tmp_path), "helpers:serve_asleep", "sleeper", lazy=False)
    try:
        _wait_ready(child)
        answers: list[bool] = []
        sender = threading.Thread(target=lambda: answers.extend(child.send(_big_ask(i)) for i in range(60)))
        started = time.monotonic()
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "send() blocked on a child that reads nothing"
        assert answers == [True] * 60 and time.monotonic() - started < 5
        assert child.alive(), "it is still there, reading nothing"
        while child._outbox is not None and child._outbox.put(_big_ask(0)):
            pass
        assert not child.send(_big_ask(0)), f"more than {OUTBOX_LIMIT} orders waiting are refused"
    finally:
        child.abandon()


def test_a_dead_child_is_said_once_and_the_next_send_starts_a_fresh_one(tmp_path):
    child = ChildHandle(str(tmp_path), "helpers:serve_asleep", "sleeper", lazy=False)
    first = child.pid
    child.kill()
    child.stopping = False  # as if the kernel had killed it
    assert child.exited() == "worker died from SIGKILL (killed: out of memory?)"
    assert child.exited() is None, "said once"
    assert child.send(_big_ask(1)) and child.pid not in (None, first)
    child.abandon()
