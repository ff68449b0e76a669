"""The tasks a connection runs beside its reader (a pump, a restart under way, a failure report), held here.

The event loop keeps only weak references to tasks, so an unreferenced one can be collected mid-flight; whatever
is still running when the connection ends is cancelled then. (A connection's session itself is its
streaming.sessions.supervisor's.)
"""

import asyncio
import logging
import typing as tp

logger = logging.getLogger(__name__)


class Tasks:
    """The tasks one connection owns: referenced until they end, cancelled and awaited by `close()`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine: tp.Coroutine, name: tp.Optional[str] = None) -> asyncio.Task:
        """Runs `coroutine` beside the reader loop, held here until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancels every task but the caller's own and waits until they have ended."""
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
