"""driftloop.threads: the CPUs a process may use, each purpose's budget, and the limits applied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from driftloop import threads
from driftloop.config import Config, RuntimeConfig, config_from_dict
from driftloop.errors import ConfigError
from driftloop.threads import (
    LEAVE_DEFAULTS,
    PURPOSES,
    CpuLimits,
    cgroup_cpu_quota,
    cpu_limits,
    limit_threads,
    thread_budget,
    thread_limits,
    usable_cpus,
)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


# --- cgroup files ------------------------------------------------------------------------


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("max 100000\n", None),          # no limit
    ("max\n", None),
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),          # 1.5 CPUs: rounded up
    ("50000 100000\n", 1),           # half a CPU is still one thread
    ("400000 200000", 2),            # another period
    ("", None),
    ("garbage here\n", None),
    ("0 100000\n", None),
    ("100000 0\n", None),
])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, cpus):
    root = _tree(tmp_path / "cg", {"cpu.max": cpu_max})
    assert cgroup_cpu_quota(root, _proc(tmp_path, "0::/\n")) == cpus


def test_no_cgroup_files_is_no_limit(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "absent", tmp_path / "absent-proc") is None
    (tmp_path / "empty").mkdir()
    assert cgroup_cpu_quota(tmp_path / "empty", _proc(tmp_path, "")) is None


def test_cgroup_v2_reads_the_own_cgroup_and_its_ancestors(tmp_path):
    # the pod's limit sits on a parent, a container limit below it: the tightest counts
    root = _tree(tmp_path / "cg", {
        "cpu.max": "max 100000\n",
        "kubepods/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "300000 100000\n",
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })
    proc = _proc(tmp_path, "0::/kubepods/pod1/ctr\n")
    assert cgroup_cpu_quota(root, proc) == 3
    (root / "kubepods/pod1/ctr/cpu.max").write_text("120000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 2


def test_a_cgroup_path_outside_the_mount_reads_the_mount_root(tmp_path):
    # a container's namespaced view: /proc/self/cgroup names a path the mount does not have
    root = _tree(tmp_path / "cg", {"cpu.max": "100000 100000\n"})
    assert cgroup_cpu_quota(root, _proc(tmp_path, "0::/../../etc\n")) == 1
    assert cgroup_cpu_quota(root, _proc(tmp_path, "0::/no/such/group\n")) == 1


@pytest.mark.parametrize(("quota", "period", "cpus"), [
    ("-1", "100000", None),          # v1's "no restriction"
    ("250000", "100000", 3),
    ("100000", "100000", 1),
    ("x", "100000", None),
])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, cpus):
    root = _tree(tmp_path / "cg", {"cpu/cpu.cfs_quota_us": quota + "\n",
                                   "cpu/cpu.cfs_period_us": period + "\n"})
    proc = _proc(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/\n0::/\n")
    assert cgroup_cpu_quota(root, proc) == cpus


def test_cgroup_v1_nested_and_the_combined_mount(tmp_path):
    root = _tree(tmp_path / "cg", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
    })
    assert cgroup_cpu_quota(root, _proc(tmp_path, "2:cpu,cpuacct:/docker/abc\n")) == 2
    # a quota file without its period is skipped
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us").unlink()
    assert cgroup_cpu_quota(root, _proc(tmp_path, "2:cpu,cpuacct:/docker/abc\n")) is None


def test_this_machines_cgroup_reads_without_error():
    quota = cgroup_cpu_quota()
    assert quota is None or quota >= 1


# --- usable CPUs and the budget ----------------------------------------------------------


def _pin(monkeypatch, cpus: int, machine: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "cpu_count", lambda: machine)


def test_usable_cpus_is_the_smallest_limit(tmp_path, monkeypatch):
    _pin(monkeypatch, 6, 8)
    root = _tree(tmp_path / "cg", {"cpu.max": "400000 100000\n"})
    proc = _proc(tmp_path, "0::/\n")
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 4           # quota
    assert usable_cpus(3, cgroup_root=root, proc_cgroup=proc) == 3        # override
    assert usable_cpus(16, cgroup_root=root, proc_cgroup=proc) == 4       # never above
    (root / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(cgroup_root=root, proc_cgroup=proc) == 6           # affinity
    with pytest.raises(ValueError):
        usable_cpus(-2)


def test_affinity_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert cpu_limits().affinity == 3


def test_reserved_cpus():
    assert not CpuLimits(machine=2, affinity=2, quota=None, override=None).reserved
    assert CpuLimits(machine=8, affinity=2, quota=None, override=None).reserved
    assert CpuLimits(machine=2, affinity=2, quota=2, override=None).reserved
    assert CpuLimits(machine=2, affinity=2, quota=None, override=1).reserved
    assert "shared" in CpuLimits(machine=2, affinity=2, quota=None, override=None).describe()


@pytest.mark.parametrize("limits", [
    CpuLimits(machine=2, affinity=2, quota=None, override=None),
    CpuLimits(machine=64, affinity=64, quota=3, override=None),
    CpuLimits(machine=64, affinity=4, quota=None, override=None),
    CpuLimits(machine=8, affinity=8, quota=None, override=2),
    CpuLimits(machine=8, affinity=8, quota=5, override=7),
    CpuLimits(machine=1, affinity=1, quota=None, override=None),
])
def test_the_budget_never_exceeds_the_usable_cpus(limits):
    for purpose in PURPOSES:
        budget = thread_budget(purpose, limits=limits)  # type: ignore[arg-type]
        assert budget is not None and 1 <= budget <= limits.usable
    assert thread_budget("request", limits=limits) == 1
    assert thread_budget("latency", limits=limits) == 1
    # batch work takes every usable CPU only when they are the process's own
    assert thread_budget("train", limits=limits) == (limits.usable if limits.reserved else 1)


def test_the_budget_on_shared_and_reserved_cpus(tmp_path, monkeypatch):
    _pin(monkeypatch, 2, 2)  # a shared 2-core machine, no quota: the machine
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path / "none")
    monkeypatch.setattr(threads, "PROC_CGROUP", tmp_path / "none-proc")
    assert thread_budget("train") == 1
    assert thread_budget("train", 2) == 2 and thread_budget("train", 9) == 2
    assert thread_budget("train", LEAVE_DEFAULTS) is None
    _pin(monkeypatch, 2, 8)  # pinned to 2 of 8 CPUs (a static CPU manager pod)
    assert thread_budget("train") == 2 and thread_budget("request") == 1
    with pytest.raises(ValueError):
        thread_budget("nonsense")  # type: ignore[arg-type]


def test_the_cgroup_is_read_at_every_call(tmp_path, monkeypatch):
    _pin(monkeypatch, 8, 8)
    root = _tree(tmp_path / "cg", {"cpu.max": "200000 100000\n"})
    monkeypatch.setattr(threads, "CGROUP_ROOT", root)
    monkeypatch.setattr(threads, "PROC_CGROUP", _proc(tmp_path, "0::/\n"))
    assert thread_budget("train") == 2
    (root / "cpu.max").write_text("300000 100000\n")  # an in-place pod resize
    assert thread_budget("train") == 3


# --- the limits applied ------------------------------------------------------------------


def _pools() -> list[int]:
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime)

    return [info["num_threads"] for info in threadpool_info()]


def test_limit_threads_applies_inside_and_restores_after():
    import pyarrow

    before, arrow_before = _pools(), pyarrow.cpu_count()
    assert any(info["user_api"] == "openmp" for info in threadpool_info())
    with limit_threads(1) as n:
        assert n == 1 and set(_pools()) == {1} and pyarrow.cpu_count() == 1
    assert _pools() == before and pyarrow.cpu_count() == arrow_before
    with pytest.raises(ValueError), limit_threads(0):
        pass


def test_limits_are_restored_after_an_error():
    before = _pools()
    with pytest.raises(RuntimeError), thread_limits("train", 1):
        raise RuntimeError("boom")
    assert _pools() == before


def test_nested_blocks_only_narrow(monkeypatch, tmp_path):
    _pin(monkeypatch, 2, 2)
    before = _pools()
    with thread_limits("run", 2) as outer:   # the run's config: max_threads 2
        assert outer == 2
        with thread_limits("step") as step:  # a step inherits the run's budget
            assert step == 2
            with thread_limits("request") as one:
                assert one == 1 and set(_pools()) == {1}
            with thread_limits("train", 8) as train:  # cannot widen
                assert train == 2
            assert set(_pools()) <= {2}
    with thread_limits("run", 1), thread_limits("train", 2) as train:
        assert train == 1 and set(_pools()) == {1}
    assert _pools() == before


def test_leave_defaults_leaves_every_block_inside_alone():
    before = _pools()
    with thread_limits("run", LEAVE_DEFAULTS) as outer:
        assert outer is None
        with thread_limits("step") as step, thread_limits("train", 1) as train:
            assert step is None and train is None and _pools() == before
    # under a budget, -1 does not lift it
    with thread_limits("run", 1) as outer, thread_limits("train", LEAVE_DEFAULTS) as inner:
        assert outer == inner == 1 and set(_pools()) == {1}


def _shared_two_cores(monkeypatch, tmp_path) -> None:
    """The issue's machine: 2 CPUs, no quota, nothing reserved."""
    _pin(monkeypatch, 2, 2)
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path / "no-cgroup")
    monkeypatch.setattr(threads, "PROC_CGROUP", tmp_path / "no-proc")


def test_train_model_limits_its_own_pools(monkeypatch, tmp_path):
    import pandas as pd

    from driftloop.data.schema import schema_from_dict
    from driftloop.models import train

    _shared_two_cores(monkeypatch, tmp_path)
    seen = []

    def fit_here(*args, **kwargs):
        seen.append(_pools())
        raise RuntimeError("stop")

    monkeypatch.setattr(train, "build_pipeline", fit_here)
    schema = schema_from_dict({"columns": [{"name": "x", "kind": "numeric"}]})
    df = pd.DataFrame({"id": [str(i) for i in range(40)], "x": range(40),
                       "label": ["a", "b"] * 20})
    before = _pools()
    with pytest.raises(RuntimeError, match="stop"):
        train.train_model(df, schema, Config().train, model_name="m")
    assert seen == [[1] * len(before)]  # no run around it: train decides by itself
    with thread_limits("run", LEAVE_DEFAULTS), pytest.raises(RuntimeError):
        train.train_model(df, schema, Config().train, model_name="m")
    assert seen[1] == before
    assert _pools() == before


def test_a_step_limits_its_pools(monkeypatch, tmp_path):
    from driftloop.steps.common import step_context

    _shared_two_cores(monkeypatch, tmp_path)
    before = _pools()
    with step_context("x"):
        assert set(_pools()) == {1}
    assert _pools() == before
    with thread_limits("run", 2), step_context("x"):
        assert set(_pools()) <= {2}  # the run's explicit budget holds inside its steps
    with thread_limits("run", LEAVE_DEFAULTS), step_context("x"):
        assert _pools() == before


# --- the config field --------------------------------------------------------------------


def test_runtime_config():
    assert Config().runtime.max_threads == 0
    assert config_from_dict({"runtime": {"max_threads": 3}}).runtime.max_threads == 3
    assert RuntimeConfig(max_threads=LEAVE_DEFAULTS).max_threads == -1
    with pytest.raises(ConfigError, match=r"runtime\.max_threads"):
        RuntimeConfig(max_threads=-2)
