"""``run_kopf(**kw)``: ``kopf.operator(**kw)`` that can share its event loop with others.

On exit, ``kopf.operator()`` treats EVERY task created in the loop since it started as its
own "hung task": it waits up to 5 s for them, then cancels them. In one process that also
runs the emulator (its per-connection request handlers), a second operator, site agents'
loops or a test's own tasks, stopping one operator stalls for 5 s and then cancels all of
those — seen as a hang followed by unrelated CancelledErrors.

``run_kopf`` is ``kopf.spawn_tasks()`` + ``kopf.run_tasks()`` (kopf's public embedding
API, what ``kopf.operator()`` does) with ``ignored`` = every task that is not this run's.
This run's tasks are recognised by a context variable set in the task that calls
``run_kopf``: tasks inherit their creator's context, so everything kopf spawns — and
everything its handlers spawn — carries it; a loop task factory records them.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import kopf

_RUN: contextvars.ContextVar[weakref.WeakSet[asyncio.Task[Any]] | None] = contextvars.ContextVar(
    "fedcare_kopf_run", default=None)


def track_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Record which tasks each kopf run creates (idempotent; chains an existing factory)."""
    previous = loop.get_task_factory()
    if getattr(previous, "fedcare_tracking", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, context: contextvars.Context | None = None) -> Any:
        if previous is not None:
            task = previous(loop, coro) if context is None else previous(loop, coro, context=context)  # type: ignore[call-arg]
        else:
            task = asyncio.Task(coro, loop=loop, context=context)
        owner = _RUN.get() if context is None else context.get(_RUN)
        if owner is not None:
            owner.add(task)  # type: ignore[arg-type]
        return task

    factory.fedcare_tracking = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


class _NotOwnedBy:
    """kopf's ``ignored`` tasks: all but one run's (kopf only ever tests ``task in ignored``)."""

    def __init__(self, owned: weakref.WeakSet[asyncio.Task[Any]]) -> None:
        self.owned = owned

    def __contains__(self, task: object) -> bool:
        return task not in self.owned


async def run_kopf(**kwargs: Any) -> None:
    """Run an operator until its ``stop_flag``; ``kwargs`` as for ``kopf.operator()``."""
    track_tasks(asyncio.get_running_loop())
    # A task of its own: the run's marker is set in that task's context, not the caller's.
    await asyncio.create_task(_run(**kwargs), name="kopf operator")


async def _run(**kwargs: Any) -> None:
    owned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    _RUN.set(owned)
    tasks = await kopf.spawn_tasks(**kwargs)
    await kopf.run_tasks(tasks, ignored=_NotOwnedBy(owned))  # type: ignore[arg-type]
