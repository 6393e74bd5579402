"""Where and how the networks run: device, autocast precision, CPU threads, reader processes.

One resolution for every user (``wsi-seg segment``, cohorts on dask, the napari job,
training), so ``--device``, ``--precision`` and ``--workers`` mean the same everywhere:

* device ``auto``: the first CUDA device if there is one, else the CPU;
* precision ``auto``: bf16 where the device computes it natively (CUDA GPUs with bf16,
  i.e. Ampere and newer; CPUs with AVX512-BF16 or AMX), fp16 on older CUDA GPUs, fp32
  elsewhere. bf16 keeps fp32's range, so training needs no gradient scaler with it;
  fp16 does (:func:`needs_grad_scaler`);
* CPUs: what this process may use, the smallest of its CPU affinity, the cgroup CPU
  quota (``cpu.max``), ``SLURM_CPUS_PER_TASK`` and ``OMP_NUM_THREADS`` — not the
  machine's core count, which oversubscribes a shared node or a container;
* inference streams (batches run at once, each on its own thread): see
  :func:`resolve_streams`; torch threads per stream: those CPUs shared by the streams;
  reader processes: see :func:`resolve_workers`.

:func:`resolve_runtime` returns all of it as a :class:`Runtime`, whose ``provenance()``
is recorded with every result.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.errors import ConfigError
from wsi_seg.inference.allocator import malloc_state

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device, without checking this machine has it
    (a dask client checks names that only its workers resolve); ``auto`` is not parsed."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → first CUDA device if present, else CPU; ``cuda:N`` checked against this machine."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast
    runs the networks 1.5–2× faster than fp32 (``benchmarks/precision.py``); elsewhere
    it is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def _cuda_has_bf16(device: torch.device) -> bool:
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto`` → bf16 where native (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    older CUDA GPUs, else fp32; explicit choices are validated against the device."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if _cuda_has_bf16(device) else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast is for CUDA; use bf16 or fp32 on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (resolved by :func:`resolve_precision`)."""
    import torch

    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, precision: str) -> bool:
    """Whether training at ``precision`` needs a gradient scaler (fp16's narrow range)."""
    return resolve_precision(device, precision) == "fp16"


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, and which limit decided it."""

    cpus: int
    source: str  # affinity | cgroup | slurm | omp | cpu_count
    limits: dict[str, int]  # every limit found, for the provenance


def _cgroup_quota_cpus(root: Path, proc_cgroup: Path) -> int | None:
    """CPUs of the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up; None
    when unlimited or unreadable. The process's own cgroup first, then the root's."""
    candidates: list[Path] = []
    try:
        for line in proc_cgroup.read_text(encoding="utf-8").splitlines():
            hierarchy, _, path = line.partition("::")
            if hierarchy == "0" and path.strip() not in ("", "/"):
                candidates.append(root / path.strip().lstrip("/"))
    except OSError:
        pass
    candidates.append(root)
    for base in candidates:
        try:
            quota, period = (base / "cpu.max").read_text(encoding="utf-8").split()[:2]
        except (OSError, ValueError):
            try:
                quota = (base / "cpu" / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip()
                period = (base / "cpu" / "cpu.cfs_period_us").read_text(encoding="utf-8").strip()
            except OSError:
                continue
        if quota in ("max", "-1"):
            return None
        q, p = _positive_int(quota), _positive_int(period)
        if q is not None and p is not None:
            return max(1, math.ceil(q / p))
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if n > 0 else None


def available_cpus(
    env: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> CpuBudget:
    """The CPUs this process may use: the smallest of its affinity, the cgroup quota,
    ``SLURM_CPUS_PER_TASK`` and ``OMP_NUM_THREADS`` (each where present)."""
    env = os.environ if env is None else env
    limits: dict[str, int] = {}
    if hasattr(os, "sched_getaffinity"):
        limits["affinity"] = len(os.sched_getaffinity(0))
    else:
        limits["cpu_count"] = os.cpu_count() or 1
    quota = _cgroup_quota_cpus(cgroup_root, proc_cgroup)
    if quota is not None:
        limits["cgroup"] = quota
    for source, var in (("slurm", "SLURM_CPUS_PER_TASK"), ("omp", "OMP_NUM_THREADS")):
        n = _positive_int(env.get(var))
        if n is not None:
            limits[source] = n
    source = min(limits, key=lambda k: limits[k])  # first of the smallest, in the order above
    return CpuBudget(cpus=limits[source], source=source, limits=limits)


MAX_BATCH_SIZE = 1024  # patches per model call a user may ask for
MAX_WORKERS_PER_CPU = 4  # reader processes per CPU: more only queue for the same cores


def resolve_batch_size(device: torch.device, batch_size: int | None) -> int:
    """Patches per model call for ``batch_size`` (None: auto).

    Auto is 2 on the CPU, where small batches stay in cache: swin-t ran 1.3–1.5× faster
    per patch at batch 2 than at 8 (fp32 and bf16, 2 cores), the ``small`` preset about
    10 % slower. 32 on CUDA.
    """
    if batch_size is not None:
        if batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"--batch-size {batch_size}: at most {MAX_BATCH_SIZE} patches per model call (a batch "
                              f"of 224-px patches that size already holds gigabytes of activations)")
        return batch_size
    return 2 if device.type == "cpu" else 32


def resolve_workers(device: torch.device, workers: int | None, cpus: int) -> int:
    """Reader processes for ``workers`` (None: auto) when ``cpus`` CPUs are available.

    Auto is 0 on the CPU: the model's threads already use every core, and reader
    processes only compete with them (``benchmarks/segment_throughput.py --workers``:
    swin-t end-to-end/model-only 1.01 in-process vs 0.93 with one reader on 2 cores).
    On CUDA, where decoding is the limit, one reader per spare CPU, up to 8.
    """
    if workers is not None:
        if workers > MAX_WORKERS_PER_CPU * cpus:
            raise ConfigError(f"--workers {workers}: this process may use {cpus} CPUs; at most "
                              f"{MAX_WORKERS_PER_CPU * cpus} reader processes ({MAX_WORKERS_PER_CPU} per CPU)")
        return workers
    if device.type == "cpu":
        return 0
    return max(1, min(8, cpus - 1))


MAX_READ_THREADS = 4
MAX_WRITERS = 4


def resolve_read_threads(workers: int, cpus: int) -> int:
    """Threads reading blocks in this process: one per CPU (up to 4) when there are no
    reader processes, else 1 (the processes read). Decoding, the bilinear-match blur and
    most of the seeding release the GIL, so on 2 cores two reading threads keep both
    busy where one left the null-model loop waiting on it (``benchmarks/engine_ceiling.py``)."""
    return max(1, min(MAX_READ_THREADS, cpus)) if workers == 0 else 1


def resolve_writers(cpus: int) -> int:
    """Threads writing finished blocks: one per CPU, up to 4. Blocks are separate zarr
    chunks, so they are written at once; zarr's own threads compress each block's chunks."""
    return max(1, min(MAX_WRITERS, cpus))


MAX_CPU_STREAMS = 8


def resolve_streams(device: torch.device, streams: int | None, threads: int) -> int:
    """Batches the model runs at once for ``streams`` (None: auto), given ``threads`` CPU
    threads for the model.

    Auto is one stream per thread on the CPU (up to 8), each with one torch thread: on 2
    cores two streams of one thread ran the model alone 1.2–1.3× (``small``) and 1.17×
    (swin-t) as fast as one stream of two threads, and whole runs 1.65× and 1.12×
    (``benchmarks/segment_throughput.py --streams 1,auto``, docs/benchmarks.md), because a
    batch of small operators leaves a second intra-op thread waiting at every barrier.
    1 on CUDA, where the GPU queues the work.
    """
    if streams is not None:
        return streams
    if device.type != "cpu":
        return 1
    return max(1, min(MAX_CPU_STREAMS, threads))


@dataclass(frozen=True)
class Runtime:
    """Everything resolved about where and how one run computes."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16, never auto
    torch_threads: int  # per inference stream
    reader_workers: int
    batch_size: int
    cpus: CpuBudget
    streams: int  # batches in flight at once, each on its own thread
    read_threads: int = 1  # in-process reading threads (no reader processes)
    writers: int = 1  # threads writing finished blocks

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def provenance(self) -> dict[str, Any]:
        """What was resolved, as recorded in a result's provenance (``inference``)."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "reader_workers": self.reader_workers,
            "batch_size": self.batch_size,
            "torch_threads": self.torch_threads,
            "streams": self.streams,
            "read_threads": self.read_threads,
            "writers": self.writers,
            "cpus": self.cpus.cpus,
            "cpus_source": self.cpus.source,
            "malloc": malloc_state(),
        }


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    *,
    workers: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    env: Mapping[str, str] | None = None,
    streams: int | None = None,
) -> Runtime:
    """Resolve (and validate) device, precision, threads, streams, readers and batch size
    once. ``threads``: CPU threads for the model in all (None: the CPUs), shared by the
    streams."""
    dev = resolve_device(device)
    budget = available_cpus(env)
    total = threads if threads is not None else budget.cpus
    n_streams = resolve_streams(dev, streams, total)
    n_workers = resolve_workers(dev, workers, budget.cpus)
    return Runtime(
        device=dev,
        precision=resolve_precision(dev, precision),
        torch_threads=max(1, total // n_streams),
        streams=n_streams,
        reader_workers=n_workers,
        batch_size=resolve_batch_size(dev, batch_size),
        cpus=budget,
        read_threads=resolve_read_threads(n_workers, budget.cpus),
        writers=resolve_writers(budget.cpus),
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
