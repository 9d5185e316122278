"""Images side by side, results in input order: the concurrency both drivers share.

While one image is in the model (which releases the GIL; the detector runs
as many calls at once as it has lanes, see
:class:`~airflow_privacy.core.detect.PersonDetector`), another is read,
decoded, blurred, encoded, hashed or written. A bounded window keeps at most
``workers + 1`` images in memory whatever the batch or shard size, and
results come back in input order, so manifests, checkpoints and logs do not
depend on the number of workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

DEFAULT_WORKERS = 2  # the detector's two lanes on a CPU worker, each kept busy by one image

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered(
    job: Callable[[Item], Result], items: Iterable[Item], *, workers: int = DEFAULT_WORKERS
) -> Iterator[tuple[Item, Result]]:
    """``(item, job(item))`` for every item, in order, with up to ``workers`` jobs running.

    ``items`` is consumed lazily (a generator of video frames works): the window
    of submitted jobs is ``workers + 1``, so the next item is already being
    prepared when a worker frees up, yet memory stays bounded. The first
    exception (a storage outage) stops it: jobs not yet started are cancelled,
    running ones finish.
    """
    if workers <= 1:
        for item in items:
            yield item, job(item)
        return
    pending: deque[tuple[Item, Future[Result]]] = deque()
    upcoming = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="anonymize") as pool:
        try:
            for item in upcoming:
                pending.append((item, pool.submit(job, item)))
                if len(pending) > workers:
                    break
            while pending:
                item, future = pending.popleft()
                result = future.result()
                following = next(upcoming, _END)
                if following is not _END:
                    pending.append((following, pool.submit(job, following)))
                yield item, result
        finally:
            for _, future in pending:
                future.cancel()


_END: Any = object()


def in_order(
    job: Callable[[str], Result],
    keys: list[str],
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> Iterator[tuple[str, Result]]:
    """:func:`ordered` over input keys; ``progress`` wraps the keys as they complete."""
    ticks = iter(progress(keys)) if progress else None
    for key, result in ordered(job, keys, workers=workers):
        if ticks is not None:
            next(ticks, None)
        yield key, result
