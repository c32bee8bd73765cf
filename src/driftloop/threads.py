"""How many threads each thread pool may start: from the CPUs this process may really use.

scikit-learn's HistGradientBoosting (OpenMP, one parallel region per tree node) and the
BLAS libraries numpy and scipy load (OpenBLAS, one pool each) size their pools to every
CPU of the machine, whatever else runs on it. On a shared machine their threads spin at
barriers waiting for a thread another process holds: a tabular ``driftloop run`` on 2
shared cores took 493 s wall (450 s CPU) with the libraries' defaults and 10.4 s with
``OMP_NUM_THREADS=1`` (issue 16). This module decides the number instead:

* :func:`usable_cpus` is what the process may use at most: the CPUs of its affinity mask
  (``os.sched_getaffinity``; a Kubernetes ``static`` CPU manager pins a pod there), the
  CPU bandwidth quota of its cgroup rounded up (a pod's CPU limit: the kubelet writes the
  limit as a CFS quota over a 100 ms period, ``milliCPUToQuota`` in
  ``pkg/kubelet/kuberuntime/helpers_linux.go`` of kubernetes/kubernetes), and an explicit
  override (:attr:`driftloop.config.RuntimeConfig.max_threads`), the smallest of them.
* :func:`thread_budget` is what one kind of work gets within that (see
  :data:`PURPOSES`): a single request or a timed single-row call 1; batch work (a step,
  training, drift, evaluation, a large served batch) every usable CPU **when the CPUs
  are the process's own** (a cgroup quota, an affinity mask narrower than the machine, or
  an explicit override says so), else 1: CPUs nobody reserved for the process are shared
  with whatever else runs, and there a second thread only waits. Measured on 2 shared
  cores (``benchmarks/results/threads.md``, 50,000 records, a busy loop per CPU): the
  run took 31.2 s wall / 18.0 s CPU with the libraries' pools and 13.8 s / 7.3 s with
  this budget; without the added load 7.3 s / 9.0 s against 6.9 s / 6.9 s. One
  HistGradientBoosting fit of 50,000 rows while other jobs ran: 1.1 s with 1 thread,
  19 s with 2. The thread count does not change a fitted model (HistGradientBoosting
  builds each feature's histogram in one thread: 1 and 2 threads gave identical
  probabilities).
* :func:`thread_limits` applies a budget for a block with threadpoolctl (every OpenMP and
  BLAS library loaded in the process) and pyarrow's CPU pool when pyarrow is loaded;
  nested blocks only ever narrow the budget of the block around them, so the entry point
  (``driftloop run``) decides for the whole run and a step or a training call inside it
  cannot widen it. :data:`LEAVE_DEFAULTS` (``max_threads=-1``) leaves every library to
  size itself, for comparison (``benchmarks/threads.py``).

What a limit cannot reach, by design of the libraries: a library loaded after the block
started keeps its own default (so each step applies its budget again when it starts,
after its imports); OpenMP's limit is per calling thread (``omp_set_num_threads``), so
other Python threads (a server's request threads) keep theirs, while a BLAS limit holds
for the whole process.

The quota files follow the kernel's documentation: cgroup v2 ``cpu.max`` is
``"$MAX $PERIOD"`` with ``max`` for no limit (``Documentation/admin-guide/cgroup-v2.rst``);
cgroup v1 ``cpu.cfs_quota_us`` is ``-1`` for no limit over ``cpu.cfs_period_us``
(``Documentation/scheduler/sched-bwc.rst``). As in joblib's loky
(``joblib/externals/loky/backend/context.py``, ``_cpu_count_cgroup``, joblib 1.6.0) a
quota becomes ``ceil(quota / period)`` CPUs; unlike it, the process's own cgroup (from
``/proc/self/cgroup``) and its ancestors are read too, not only the mount's root, and the
tightest limit counts (a parent's quota bounds its children). Nothing here reads the
environment; the files are read at every call (an in-place pod resize changes them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, ParamSpec, TypeVar

from threadpoolctl import threadpool_limits

__all__ = [
    "LEAVE_DEFAULTS",
    "PURPOSES",
    "CpuLimits",
    "Purpose",
    "cgroup_cpu_quota",
    "cpu_limits",
    "limit_threads",
    "limited",
    "thread_budget",
    "thread_limits",
    "usable_cpus",
]

_log = logging.getLogger(__name__)

#: ``max_threads`` value that leaves every library's pool at its own default.
LEAVE_DEFAULTS = -1

#: Where the cgroup hierarchies are mounted, and the file naming the process's cgroups.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

Purpose = Literal["run", "step", "train", "drift", "evaluate", "serve", "request", "latency"]

#: What each purpose may use: ``"batch"`` (every usable CPU when they are reserved for the
#: process, else 1) or ``"single"`` (always 1).
PURPOSES: dict[str, str] = {
    "run": "batch",       # a whole in-process run (driftloop run / demo): the outer bound
    "step": "batch",      # one pipeline step (its KFP task, or inside a run)
    "train": "batch",     # fitting a model (HistGradientBoosting's OpenMP, lbfgs's BLAS)
    "drift": "batch",     # drift tests and distances over a window
    "evaluate": "batch",  # scoring champion and challenger on the evaluation rows
    "serve": "batch",     # a served batch large enough to split over threads
    "request": "single",  # one small request in the predictor: threads only wait there
    "latency": "single",  # a timed single-row call (the gate's latency rule)
}

# The budget of the innermost active block (None: none; LEAVE_DEFAULTS: leave libraries).
_CURRENT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "driftloop_thread_budget", default=None)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _read(path: Path) -> str | None:
    """The stripped text of a small kernel file, or None when absent or unreadable."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: str, period: str) -> int | None:
    """``ceil(quota / period)``, or None for no limit (``max``, ``-1``) or a malformed pair."""
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max" (v2) or anything unexpected: no limit we can use
        return None
    if q <= 0 or p <= 0:  # -1: v1's "no restriction"
        return None
    return max(1, math.ceil(q / p))


def _v2_cpus(folder: Path) -> int | None:
    text = _read(folder / "cpu.max")
    parts = text.split() if text else []
    if not parts:
        return None
    # the kernel shows both values; a lone $MAX (a hand-made file) gets its 100 ms default
    return _quota_cpus(parts[0], parts[1] if len(parts) > 1 else "100000")


def _v1_cpus(folder: Path) -> int | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _quota_cpus(quota, period)


def _own_cgroups(proc_cgroup: Path) -> tuple[PurePosixPath, PurePosixPath]:
    """The process's cgroup path in the v2 hierarchy and in v1's ``cpu`` controller.

    ``/proc/self/cgroup`` lines are ``id:controllers:path`` (v2: ``0::path``). A missing
    or odd file gives ``/`` for both: only the mount roots are read then.
    """
    v2 = v1 = PurePosixPath("/")
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        path = PurePosixPath(parts[2])
        if parts[0] == "0" and parts[1] == "":
            v2 = path
        elif "cpu" in parts[1].split(","):
            v1 = path
    return v2, v1


def _folders(base: Path, own: PurePosixPath) -> list[Path]:
    """``base`` joined with ``own`` and each of its ancestors, the existing ones only.

    ``..`` parts are dropped: the path must stay under ``base``. In a container the
    process's path is often not below the mount (cgroup namespaces, bind mounts): then
    only ``base`` itself is read, which is the container's own cgroup.
    """
    parts = [p for p in own.parts[1:] if p not in ("", ".", "..")]
    out = []
    for depth in range(len(parts), -1, -1):
        folder = base.joinpath(*parts[:depth])
        if folder.is_dir():
            out.append(folder)
    return out


def cgroup_cpu_quota(cgroup_root: Path | None = None,
                     proc_cgroup: Path | None = None) -> int | None:
    """CPUs the process's cgroup CPU bandwidth quota allows (rounded up), or None.

    Reads cgroup v2 ``cpu.max`` under ``cgroup_root`` and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under ``cgroup_root/cpu`` (or
    ``cpu,cpuacct``), in the process's own cgroup and every ancestor; the tightest quota
    counts. Absent files, ``max`` and ``-1`` mean no limit; unreadable or malformed files
    are skipped. The paths default to :data:`CGROUP_ROOT` and :data:`PROC_CGROUP`.
    """
    cgroup_root = cgroup_root or CGROUP_ROOT
    v2, v1 = _own_cgroups(proc_cgroup or PROC_CGROUP)
    found = [cpus for folder in _folders(cgroup_root, v2) if (cpus := _v2_cpus(folder))]
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = cgroup_root / mount
        found += [cpus for folder in _folders(base, v1) if (cpus := _v1_cpus(folder))]
    return min(found) if found else None


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuLimits:
    """What bounds the CPUs of this process.

    Attributes:
        machine: CPUs of the machine (``os.cpu_count()``).
        affinity: CPUs of the process's affinity mask.
        quota: CPUs its cgroup's CPU bandwidth quota allows (rounded up); None: no quota.
        override: The explicit ``max_threads`` (> 0); None: not given.
    """

    machine: int
    affinity: int
    quota: int | None
    override: int | None

    @property
    def usable(self) -> int:
        """The smallest of affinity, quota and override: at most this many threads run."""
        return min(n for n in (self.affinity, self.quota, self.override) if n is not None)

    @property
    def reserved(self) -> bool:
        """Whether something states how many CPUs are this process's own.

        A quota, an affinity mask narrower than the machine or an explicit override; with
        none of them the CPUs are shared with whatever else runs on the machine.
        """
        return (self.quota is not None or self.override is not None
                or self.affinity < self.machine)

    def describe(self) -> str:
        """One line for a log or a benchmark header."""
        quota = "none" if self.quota is None else str(self.quota)
        override = "none" if self.override is None else str(self.override)
        return (f"{self.usable} usable CPUs (machine {self.machine}, affinity "
                f"{self.affinity}, cgroup quota {quota}, max_threads {override}; "
                f"{'reserved' if self.reserved else 'shared'})")


def cpu_limits(max_threads: int = 0, *, cgroup_root: Path | None = None,
               proc_cgroup: Path | None = None) -> CpuLimits:
    """The limits on this process's CPUs now (``max_threads`` > 0 is an explicit cap).

    Raises:
        ValueError: ``max_threads`` below :data:`LEAVE_DEFAULTS`.
    """
    if max_threads < LEAVE_DEFAULTS:
        raise ValueError(f"max_threads {max_threads}: must be >= -1")
    affinity = _affinity()
    return CpuLimits(machine=max(os.cpu_count() or affinity, affinity), affinity=affinity,
                     quota=cgroup_cpu_quota(cgroup_root, proc_cgroup),
                     override=max_threads if max_threads > 0 else None)


def usable_cpus(max_threads: int = 0, *, cgroup_root: Path | None = None,
                proc_cgroup: Path | None = None) -> int:
    """min(affinity CPUs, ceil(cgroup quota / period), ``max_threads`` when > 0)."""
    return cpu_limits(max_threads, cgroup_root=cgroup_root, proc_cgroup=proc_cgroup).usable


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"thread purpose {purpose!r}: must be one of {', '.join(PURPOSES)}")


def thread_budget(purpose: Purpose, max_threads: int = 0, *,
                  limits: CpuLimits | None = None) -> int | None:
    """Threads ``purpose`` may use: never more than :func:`usable_cpus`, at least 1.

    ``single`` purposes (``request``, ``latency``: see :data:`PURPOSES`) get 1. ``batch``
    purposes get every usable CPU when the CPUs are reserved for the process
    (:attr:`CpuLimits.reserved`: a cgroup quota such as a pod's CPU limit, an affinity
    mask narrower than the machine, or ``max_threads`` > 0), else 1.

    Args:
        purpose: The kind of work.
        max_threads: ``0``: decide from the machine; ``N > 0``: at most N;
            :data:`LEAVE_DEFAULTS`: None (the libraries size their own pools).
        limits: The limits to decide from (default: :func:`cpu_limits` now).

    Raises:
        ValueError: An unknown purpose or ``max_threads`` below -1.
    """
    _check_purpose(purpose)
    if max_threads == LEAVE_DEFAULTS:
        return None
    limits = limits or cpu_limits(max_threads)
    if PURPOSES[purpose] == "single" or not limits.reserved:
        return 1
    return limits.usable


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[int]:
    """Limit every loaded OpenMP and BLAS pool (and pyarrow's CPU pool) to ``threads``.

    threadpoolctl reads and sets each loaded library's pool size and restores it on
    exit; pyarrow's pool is only touched when pyarrow is already imported (importing it
    here would cost what the light tasks save).
    """
    if threads < 1:
        raise ValueError(f"threads {threads}: must be >= 1")
    limiter = threadpool_limits(limits=threads)
    arrow = sys.modules.get("pyarrow")
    arrow_before = arrow.cpu_count() if arrow is not None else None
    if arrow is not None:
        arrow.set_cpu_count(threads)
    token = _CURRENT.set(threads)
    try:
        yield threads
    finally:
        _CURRENT.reset(token)
        if arrow is not None and arrow_before is not None:
            arrow.set_cpu_count(arrow_before)
        limiter.restore_original_limits()


@contextlib.contextmanager
def thread_limits(purpose: Purpose, max_threads: int = 0) -> Iterator[int | None]:
    """Run the block within ``purpose``'s :func:`thread_budget`; yield its threads.

    The block yields None when the libraries keep their defaults. The outermost block
    (whose caller holds the run's config) decides from the machine; a block inside it
    takes the outer budget (``single`` purposes: 1; ``max_threads`` > 0: at most that)
    and never more, and an outer :data:`LEAVE_DEFAULTS` leaves the libraries alone for
    every block inside it.
    """
    outer = _CURRENT.get()
    if outer == LEAVE_DEFAULTS or (max_threads == LEAVE_DEFAULTS and outer is None):
        token = _CURRENT.set(LEAVE_DEFAULTS)
        try:
            yield None
        finally:
            _CURRENT.reset(token)
        return
    _check_purpose(purpose)
    if outer is None:
        budget = thread_budget(purpose, max(max_threads, 0))
        assert budget is not None  # only LEAVE_DEFAULTS gives None
    elif PURPOSES[purpose] == "single":
        budget = 1
    else:  # the outer block decided for the machine (and its config): inherit, or narrow
        budget = min(max_threads, outer) if max_threads > 0 else outer
    _log.debug("threads: %d for %s", budget, purpose)
    with limit_threads(budget):
        yield budget


def limited(purpose: Purpose) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function to run within :func:`thread_limits` of ``purpose``."""
    def wrap(func: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(func)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with thread_limits(purpose):
                return func(*args, **kwargs)

        return run

    return wrap
