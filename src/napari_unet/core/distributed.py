"""Running block or file work on a dask cluster (needs ``dask.distributed``, imported lazily).

napari-unet does not schedule anything itself: it hands independent pieces of
work (the blocks of a large image, or whole files of a batch) to a
``dask.distributed.Client`` and collects the results as they complete. The
client may talk to a :class:`distributed.LocalCluster` on this machine, or to
any cluster a lab already runs: an HPC batch system through ``dask-jobqueue``,
Kubernetes or a cloud through ``dask-gateway``, or a scheduler started by hand
(``dask scheduler`` / ``dask worker``). Workers need napari-unet installed and
must reach the input and output files (a shared file system or object store).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["get_client", "connect", "local_client", "submit_all", "Shared", "worker_setup"]


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:  # pragma: no cover - part of the test dependencies
        raise ImportError(
            "running on a dask cluster needs dask.distributed: pip install 'dask[distributed]' "
            "(or napari-unet[distributed])"
        ) from None
    return distributed


def get_client(scheduler: Any) -> Any:
    """A ``dask.distributed.Client`` for a scheduler address, or the client given.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"tcp://host:8786"`` (or any address ``dask.distributed.Client``
        accepts), or a client, returned as it is.
    """
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise TypeError(
            "client must be a dask.distributed.Client or a scheduler address such as "
            f"'tcp://host:8786', not {type(scheduler).__name__}"
        )
    address = scheduler.strip()
    hint = ("start it with 'dask scheduler' (and workers with 'dask worker ADDRESS') or check "
            "the address")
    if address.startswith("tcp://") or "://" not in address:
        # fail fast and quietly on a plain TCP address nobody listens on
        import socket

        host, _, port = address.removeprefix("tcp://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                     timeout=10).close()
        except (OSError, ValueError) as err:
            raise OSError(f"cannot reach the dask scheduler at {address}: {err}; {hint}") \
                from None
    try:
        return distributed.Client(address)
    except OSError as err:
        raise OSError(f"cannot reach the dask scheduler at {address}: {err}; {hint}") from None


@contextmanager
def connect(scheduler: Any) -> Generator[Any, None, None]:
    """:func:`get_client` as a context: a client made here from an address is closed after."""
    client = get_client(scheduler)
    try:
        yield client
    finally:
        if client is not scheduler:
            client.close()


@contextmanager
def local_client(n_workers: int, threads_per_worker: int = 1) -> Generator[Any, None, None]:
    """A client of a :class:`distributed.LocalCluster` of worker processes, closed afterwards.

    Each worker runs ``threads_per_worker`` tasks at a time and as many torch
    threads (see :func:`worker_setup`).
    """
    distributed = _distributed()
    if int(n_workers) < 1:
        raise ValueError(f"the number of workers must be at least 1, not {n_workers}")
    cluster = distributed.LocalCluster(
        n_workers=int(n_workers), threads_per_worker=int(threads_per_worker), processes=True,
        dashboard_address=":0",  # any free port: never clash with a running cluster
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


class Shared:
    """A holder for an object sent once to the workers (a model, an image).

    ``client.scatter`` would split lists and dicts, and may treat dask
    collections specially; a holder is always sent whole.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


def worker_setup() -> None:
    """In a dask worker: one torch thread per worker thread, so workers share the cores.

    Outside a worker this does nothing.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    import torch

    state = getattr(worker, "state", None)
    n = int(getattr(state, "nthreads", 0) or getattr(worker, "nthreads", 1) or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def submit_all(
    client: Any, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]]
) -> Generator[tuple[int, Any], None, None]:
    """Run ``function(*args)`` for each tuple of ``arguments`` on the cluster.

    Yields ``(index, result)`` as tasks complete (in any order). A failing
    task raises its error here. Closing the generator cancels what has not run.
    """
    distributed = _distributed()
    futures = [client.submit(function, *args, pure=False) for args in arguments]
    index = {future.key: k for k, future in enumerate(futures)}
    try:
        for future in distributed.as_completed(futures):
            result = future.result()
            k = index[future.key]
            futures[k] = None  # let the cluster forget it
            future.release()
            yield k, result
    finally:
        pending = [f for f in futures if f is not None and not f.done()]
        if pending:
            client.cancel(pending)
