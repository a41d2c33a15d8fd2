"""Watching one file that its writer replaces by rename (agentapi's state file, a rotated
token file).

A watch on the file itself ends at the first rename, so the parent directory is watched
and changes are filtered by name. inotify can be missing or exhausted in containers
(OSError): then watchfiles polls. A directory that does not exist yet is waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

_DIR_RETRY_S: Final = 2.0


async def watch_file(
    path: Path,
    on_change: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    force_polling: bool | None = None,
) -> None:
    """Await `on_change` now, after every change to `path`, and whenever the watch
    (re)starts, until `stop` is set. `on_change` must tolerate being called when nothing
    changed, and must not block the loop (file reads belong in a thread).
    `force_polling=None` lets watchfiles honour WATCHFILES_FORCE_POLLING."""
    # Here, not at module level: `snapshot` and `stop` import this module but never watch.
    import watchfiles

    directory, name = path.parent, path.name
    force = force_polling
    while not stop.is_set():
        # The file may have been written while nothing watched (first start, a directory
        # that only just appeared, a watcher that failed): look before watching.
        await on_change()
        if not directory.is_dir():
            try:
                async with asyncio.timeout(_DIR_RETRY_S):
                    await stop.wait()
            except TimeoutError:
                continue
            return
        try:
            async for _changes in watchfiles.awatch(
                directory,
                watch_filter=lambda _change, changed: Path(changed).name == name,
                stop_event=stop,
                force_polling=force,
                recursive=False,
                debounce=50,
                step=50,
            ):
                await on_change()
        except OSError as exc:
            if force:
                raise
            log.warning("watch.failed", path=str(path), error=str(exc), fallback="polling")
            force = True
