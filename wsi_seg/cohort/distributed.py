"""Cohorts on a dask.distributed cluster: one task per slide, same results as ``run_cohort``.

The client decides which slides are finished (skipped without a task), submits one task
per remaining slide and records outcomes as they arrive, in input order, through the
same ``CohortSummary`` as the sequential run. A task runs ``cohort.segment_one`` on a
worker, with the model loaded there once per worker process from the checkpoint path
(never pickled from the client), so the client and the workers must see the same files
(a shared filesystem on a cluster).

GPUs: a task that runs on CUDA asks for ``resources={"GPU": 1}``, so a worker started
with ``--resources GPU=1`` runs one slide at a time. ``--local-cluster N`` with CUDA
gives every worker that resource and worker ``i`` the GPU ``cuda:i`` (modulo the number
of GPUs).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.cohort.run import (
    CohortSummary,
    SlideOutcome,
    failed_outcome,
    output_path,
    segment_one,
    skipped_outcome,
)
from wsi_seg.errors import CheckpointError, ConfigError, WsiSegError
from wsi_seg.inference.allocator import pin_malloc_thresholds
from wsi_seg.inference.runtime import available_cpus, parse_device, resolve_device
from wsi_seg.inference.segment import SegmentOptions
from wsi_seg.model.checkpoint import LoadedModel, load_checkpoint

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # to reach a scheduler given by address
CANCEL_POLL_S = 2.0  # how often a running slide checks whether the client gave up
GPU = "GPU"  # the worker resource one CUDA slide takes (dask worker --resources GPU=1)
_INSTALL_HINT = 'pip install "wsi-seg[distributed]"'


class ClusterError(WsiSegError, ConnectionError):
    """The dask cluster lost a slide's workers, or the whole run."""


@dataclass(frozen=True)
class _Placement:
    """How tasks run on the cluster: what they ask for and how workers pick device and threads."""

    resources: dict[str, float] | None  # {"GPU": 1} for CUDA slides
    gpu_by_worker_rank: bool  # local cluster: worker i (named i) uses cuda:i
    torch_threads: int | None  # None: the worker's CPUs / its task threads
    cancel_event: str  # name of the distributed.Event the client sets on interrupt


def run_cohort_dask(
    slides: list[Path],
    out_dir: Path,
    model: LoadedModel,
    options: SegmentOptions,
    *,
    scheduler: str | None = None,
    local_workers: int | None = None,
    report: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """``run_cohort`` on the dask scheduler at ``scheduler`` or on a new local cluster of ``local_workers``.

    ``model`` (loaded on the client, e.g. on CPU) gives the checkpoint path and its sha256;
    workers load the checkpoint themselves. A Ctrl-C (KeyboardInterrupt) cancels every
    slide, stops the running ones after their current batch (they stay resumable) and
    closes a local cluster before propagating.
    """
    if (scheduler is None) == (local_workers is None):
        raise ConfigError("give either a scheduler address or a number of local workers")
    if local_workers is not None and local_workers < 1:
        raise ConfigError(f"a local cluster needs at least 1 worker, got {local_workers}")
    distributed = import_distributed()
    summary = CohortSummary(out_dir, report)
    todo: list[tuple[int, Path, Path]] = []
    for index, slide in enumerate(slides):  # finished slides never reach the cluster
        out = output_path(out_dir, slide)
        skipped = skipped_outcome(slide, out, model.sha256, options)
        if skipped is not None:
            summary.add(index, skipped)
        else:
            todo.append((index, slide, out))
    if not todo:
        return summary.outcomes
    with _cluster(distributed, scheduler, local_workers, options.device) as (client, placement):
        _run_tasks(distributed, client, placement, todo, model, options, summary)
    return summary.outcomes


def _run_tasks(
    distributed: Any,
    client: Client,
    placement: _Placement,
    todo: list[tuple[int, Path, Path]],
    model: LoadedModel,
    options: SegmentOptions,
    summary: CohortSummary,
) -> None:
    cancel = distributed.Event(placement.cancel_event, client=client)
    token = uuid.uuid4().hex[:8]
    futures = {}
    try:
        for index, slide, out in todo:
            future = client.submit(
                _segment_task, str(slide.absolute()), str(out.absolute()), str(Path(model.path).absolute()),
                model.sha256, options, placement,
                key=f"wsi-seg-slide-{index}-{token}", resources=placement.resources, pure=False,
            )
            futures[future] = (index, slide, out)
        for future in distributed.as_completed(list(futures), loop=client.loop):
            index, slide, out = futures[future]
            summary.add(index, _collect(distributed, future, slide, out))
    except BaseException:  # Ctrl-C, or a slide raised something that is not a WsiSegError
        with suppress(OSError, TimeoutError):  # a lost scheduler must not hide the cause
            cancel.set()  # running slides stop after their current batch, resumable
            client.cancel(list(futures), force=True)
        raise


def _collect(distributed: Any, future: Any, slide: Path, out: Path) -> SlideOutcome:
    """The outcome of a finished task, with the paths as the user gave them.

    A slide whose workers died is a failed slide; a run whose scheduler went away stops
    with a ClusterError. Other exceptions of a task propagate, as in the sequential run.
    """
    started = time.perf_counter()
    try:
        outcome: SlideOutcome = future.result()
    except distributed.KilledWorker:  # the worker processes running it died (OOM kill, segfault)
        err = ClusterError(f"{slide}: the dask workers segmenting it died; see their logs, rerun to resume")
        return failed_outcome(slide, out, err, started)
    except CancelledError as exc:  # only this client cancels, so: the scheduler was lost
        reason = str(exc).splitlines()[0] if str(exc) else "cancelled"
        raise ClusterError(f"the dask cluster dropped the run ({reason}); rerun the same command to resume") from None
    # tasks got absolute paths (workers may run elsewhere); say them as the user did
    error = outcome.error.replace(str(slide.absolute()), str(slide)).replace(str(out.absolute()), str(out))
    return replace(outcome, slide=str(slide), out=str(out), error=error)


# --- the cluster ------------------------------------------------------------------------


def import_distributed() -> Any:
    """The ``distributed`` module, or a one-line ConfigError with the install hint."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(f"running on a dask cluster needs dask.distributed; {_INSTALL_HINT}") from exc
    return distributed


def _device_kind(device: str) -> str:
    """cpu, cuda or auto, from a --device value; checks its syntax, not this machine."""
    return "auto" if device == "auto" else parse_device(device).type


@contextmanager
def _cluster(
    distributed: Any, scheduler: str | None, local_workers: int | None, device: str
) -> Iterator[tuple[Client, _Placement]]:
    """A connected client and how to place tasks; closes what it started."""
    import dask

    cancel_event = f"wsi-seg-cancel-{uuid.uuid4().hex}"
    if scheduler is not None:
        client = _connect(distributed, scheduler)
        try:
            yield client, _remote_placement(client, scheduler, _device_kind(device), cancel_event)
        finally:
            client.close()
        return
    assert local_workers is not None
    gpu = resolve_device(device).type == "cuda"  # same machine: check CUDA here, before starting workers
    if gpu:
        import torch

        n_gpus = torch.cuda.device_count()
        if local_workers > n_gpus and device in ("auto", "cuda"):
            log.warning("%d local workers share %d GPU(s)", local_workers, n_gpus)
    placement = _Placement(
        resources={GPU: 1} if gpu else None,
        gpu_by_worker_rank=gpu and device in ("auto", "cuda"),
        torch_threads=max(1, available_cpus().cpus // local_workers),
        cancel_event=cancel_event,
    )
    # non-daemonic workers may start DataLoader processes (read in the config at each worker (re)start)
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=local_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            memory_limit=0,  # a slide's memory is bounded by the pipeline, not by dask's spilling
            resources=placement.resources,
            preload=[__name__],  # dask_setup below: workers leave Ctrl-C to the client
            silence_logs=logging.ERROR,  # workers' warnings about the tasks cancelled on Ctrl-C
        )
        log.info("local dask cluster of %d workers, dashboard: %s", local_workers, cluster.dashboard_link)
        try:
            client = distributed.Client(cluster, set_as_default=False)
            try:
                yield client, placement
            except BaseException:
                _wait_idle(client, CANCEL_POLL_S + 3.0)
                raise
            finally:
                client.close()
        finally:
            cluster.close()


def _wait_idle(client: Client, timeout_s: float) -> None:
    """Give cancelled slides the time to stop after their batch and close their files and
    reader processes, before the workers are shut down (a second Ctrl-C cuts it short)."""
    deadline = time.monotonic() + timeout_s
    with suppress(OSError, TimeoutError):
        while time.monotonic() < deadline and any(client.run(_executing).values()):
            time.sleep(0.2)


def _executing(dask_worker: Any) -> int:
    return dask_worker.state.executing_count


def _connect(distributed: Any, address: str) -> Client:
    """A client of the scheduler at ``address``, or a one-line ConfigError.

    A bare connection is tried first: a Client that fails in its constructor hangs and
    prints a traceback when garbage-collected.
    """
    from distributed.comm import connect
    from distributed.security import Security

    async def probe() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S, **Security().get_connection_args("client"))
        await comm.close()

    try:  # on its own thread: the caller may already run an event loop (a notebook)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, probe()).result()
    except (ValueError, TypeError) as exc:  # no port, unknown scheme
        raise ConfigError(
            f"{address!r} is not a dask scheduler address ({exc}); expected e.g. tcp://host:8786"
        ) from None
    except OSError as exc:  # refused, timed out, unknown host
        raise ConfigError(
            f"cannot reach a dask scheduler at {address} ({exc}); is `dask scheduler` running there?"
        ) from None
    return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)


def _remote_placement(client: Client, address: str, kind: str, cancel_event: str) -> _Placement:
    """GPU resources when the device is CUDA, or auto on a cluster whose workers advertise GPUs."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpu_workers = [w for w in workers if w.get("resources", {}).get(GPU, 0) >= 1]
    if kind == "cuda" and workers and not gpu_workers:
        raise ConfigError(
            f"no worker of the dask cluster at {address} has a GPU resource; start GPU workers "
            f"with `dask worker {address} --resources {GPU}=1`"
        )
    if not workers:
        log.warning("no worker has joined the dask cluster at %s yet; slides wait for workers", address)
    gpu = kind == "cuda" or (kind == "auto" and bool(gpu_workers))
    return _Placement(resources={GPU: 1} if gpu else None, gpu_by_worker_rank=False,
                      torch_threads=None, cancel_event=cancel_event)


# --- on the workers ---------------------------------------------------------------------


def dask_setup(worker: Any) -> None:
    """Preload hook of ``--local-cluster`` workers: a Ctrl-C in the terminal reaches the
    whole process group, but the client handles it (cancels, then stops the workers).
    The workers are processes of ours, so their malloc thresholds are pinned too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin_malloc_thresholds()


_MODELS: dict[tuple[str, str, str], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _segment_task(slide: str, out: str, model_path: str, model_sha256: str,
                  options: SegmentOptions, placement: _Placement) -> SlideOutcome:
    """One slide on a worker: same options as the client's, but no progress bars."""
    started = time.perf_counter()
    options = replace(options, progress=False, device=_worker_device(options.device, placement),
                      threads=_worker_threads(placement))
    if options.workers != 0 and multiprocessing.current_process().daemon:
        log.info("daemonic dask worker: reading %s in-process (start workers with "
                 "DASK_DISTRIBUTED__WORKER__DAEMON=False for reader processes)", slide)
        options = replace(options, workers=0)
    try:
        model = _worker_model(model_path, options.device, model_sha256)
    except WsiSegError as exc:  # this worker cannot run the model (no CUDA, another checkpoint)
        from distributed import get_worker

        err = WsiSegError(f"{slide}: dask worker {get_worker().name}: {exc}")
        return failed_outcome(Path(slide), Path(out), err, started)
    return segment_one(Path(slide), Path(out), model, options, cancel=_ClientCancel(placement.cancel_event))


def _worker_device(device: str, placement: _Placement) -> str:
    """``cuda:i`` for local worker ``i`` (round robin over the GPUs), else ``device`` as given."""
    if not placement.gpu_by_worker_rank:
        return device
    import torch
    from distributed import get_worker

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(get_worker().name) % torch.cuda.device_count()}"


def _worker_threads(placement: _Placement) -> int:
    """The placement's torch threads, or on a remote worker its CPUs shared by the slides it
    can run at once (its threads, or its GPUs when slides take one)."""
    threads = placement.torch_threads
    if threads is None:
        from distributed import get_worker

        state = get_worker().state
        slots = state.nthreads
        for name, amount in (placement.resources or {}).items():
            slots = min(slots, int(state.total_resources.get(name, 0) // amount))
        threads = max(1, available_cpus().cpus // max(1, slots))
    return threads


def _worker_model(path: str, device: str, sha256: str) -> LoadedModel:
    """The checkpoint loaded once per worker process, per path, device and content."""
    key = (path, device, sha256)
    with _MODELS_LOCK:
        if key not in _MODELS:
            model = load_checkpoint(path, device=resolve_device(device))
            if model.sha256 != sha256:
                raise CheckpointError(
                    f"{path}: the checkpoint on this worker differs from the client's "
                    f"(sha256 {model.sha256[:12]} vs {sha256[:12]}); workers need the same files"
                )
            _MODELS.clear()  # one model per worker at a time: free the previous one's memory
            _MODELS[key] = model
        return _MODELS[key]


class _ClientCancel:
    """The ``cancel`` flag of a slide on a worker: set once the client set the run's dask
    ``Event``, which is asked at most every ``poll_s`` seconds (the engine checks before
    every batch)."""

    def __init__(self, event_name: str, poll_s: float = CANCEL_POLL_S) -> None:
        self.event_name, self.poll_s = event_name, poll_s
        self._last = -float("inf")
        self._event: Any = None
        self._set = False

    def is_set(self) -> bool:
        now = time.monotonic()
        if self._set or now - self._last < self.poll_s:
            return self._set
        self._last = now
        try:
            if self._event is None:
                from distributed import Event

                self._event = Event(self.event_name)  # through this worker's client
            self._set = bool(self._event.is_set())
        except (OSError, TimeoutError):  # scheduler unreachable: keep going, the result stays valid
            pass
        return self._set
