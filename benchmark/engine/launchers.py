"""Launchers: where a run's jobs execute.

- ``local`` with ``--workers 1`` (default): in this process, one job after another.
- ``local`` with ``--workers N``: N worker processes (spawned, not forked: forking a process
  whose OpenMP/BLAS threads are running can deadlock).
- ``ray``: one Ray task per job, each asking for ``--threads`` CPUs (or a GPU with
  ``--device cuda``), on the cluster at ``--ray-address`` or on a local Ray instance
  started here.

Every job computes with ``--threads`` torch threads wherever it runs (CPU results depend on
the thread count), so all launchers give the same numbers. Every job writes its own cells
to the shared result store (atomic files, file locks; see benchmark.store), so the launcher
only reports progress: a launcher that dies loses no finished cell, and a re-run resumes.
Workers rebuild the run from its :class:`RunConfig`; classes that tests or users registered
at run time travel as the modules (or files) that define them.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context, parent_process
from typing import TYPE_CHECKING, Any

from benchmark.errors import ShiftbenchError
from benchmark.registry import SUITES

if TYPE_CHECKING:
    from benchmark.engine.runner import Job, RunConfig, Runner

LAUNCHERS = ("local", "ray")
OnRecords = Callable[[list[dict[str, Any]]], None]


def launch(runner: Runner, jobs: list[Job], on_records: OnRecords) -> None:
    config = runner.config
    if config.launcher not in LAUNCHERS:
        raise ShiftbenchError(f"unknown launcher {config.launcher!r}; known: "
                              f"{', '.join(LAUNCHERS)}")
    if config.workers < 1:
        raise ShiftbenchError(f"--workers must be >= 1, got {config.workers}")
    if config.launcher == "ray":
        _launch_ray(runner, jobs, on_records)
    elif config.workers == 1 or len(jobs) <= 1:
        for job in jobs:
            on_records(runner.execute(job))
    else:
        _launch_processes(runner, jobs, on_records)


# ---- what a worker needs to rebuild the run -----------------------------------------------
@dataclass(frozen=True)
class WorkerSetup:
    config: RunConfig
    modules: tuple[str, ...]  # modules registering the run's suite/adapters, to import
    files: tuple[str, ...] = field(default=())  # file adapters: path.py:Class


def worker_setup(runner: Runner) -> WorkerSetup:
    imports = runner.imports
    return WorkerSetup(runner.config, imports.modules, imports.files)


_WORKER: dict[str, Any] = {}


def _init_worker(setup: WorkerSetup, lock: Any = None, counter: Any = None) -> None:
    from tqdm.auto import tqdm

    from benchmark.engine.isolation import die_with_parent
    from benchmark.engine.runner import Runner
    from benchmark.registry import load_builtins

    # A worker busy with a job would otherwise outlive a killed runner (and keep its zygote
    # and adapter process alive) until the job ends, which on a long stream is hours.
    parent = parent_process()
    die_with_parent(None if parent is None else parent.pid)
    if lock is not None:
        tqdm.set_lock(lock)
    if counter is not None:
        with counter.get_lock():
            counter.value += 1
            _WORKER["position"] = counter.value
    load_builtins()
    for module in setup.modules:
        importlib.import_module(module)
    SUITES.get(setup.config.suite)  # file adapters load only in adapter processes
    _WORKER["runner"] = Runner(setup.config)


def _run_in_worker(job: Job) -> list[dict[str, Any]]:
    return _WORKER["runner"].execute(job, position=_WORKER.get("position", 0))


# ---- local processes --------------------------------------------------------------------
def _launch_processes(runner: Runner, jobs: list[Job], on_records: OnRecords) -> None:
    from tqdm.auto import tqdm

    workers = min(runner.config.workers, len(jobs))
    context = get_context("spawn")
    counter = context.Value("i", 0)
    lock = context.RLock()  # one lock for every bar's writes, parent and workers
    tqdm.set_lock(lock)
    setup = worker_setup(runner)
    jobs = spread_checkpoints(jobs)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(setup, lock, counter)) as pool:
        futures: dict[Future, Job] = {pool.submit(_run_in_worker, job): job for job in jobs}
        try:
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_records(_records_or_failure(future, futures[future]))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def spread_checkpoints(jobs: list[Job]) -> list[Job]:
    """The first job of each source checkpoint first, then the rest in plan order: workers
    start by training different source models instead of queueing behind one."""
    seen: set[str] = set()
    first, rest = [], []
    for job in jobs:
        checkpoint = job.cells[0].identity["checkpoint"]
        (rest if checkpoint in seen else first).append(job)
        seen.add(checkpoint)
    return first + rest


def _records_or_failure(future: Future, job: Job) -> list[dict[str, Any]]:
    """A worker that died (killed, out of memory) fails its job's cells in the summary; they
    are not stored, so a re-run retries them."""
    try:
        return future.result()
    except Exception as exc:
        return [{"status": "failed", "label": job.label, "protocol": job.protocol,
                 "batch_size": job.batch_size, "seed": job.seed, "domain": cell.domain,
                 "error": f"worker died: {type(exc).__name__}: {exc}"} for cell in job.cells]


# ---- Ray --------------------------------------------------------------------------------
def _launch_ray(runner: Runner, jobs: list[Job], on_records: OnRecords) -> None:
    try:
        import ray
    except ImportError:
        raise ShiftbenchError("--launcher ray needs Ray: pip install 'shiftbench[ray]'") from None
    config = runner.config
    started_here = not ray.is_initialized()
    if started_here:
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False,
                                  "include_dashboard": False}
        if config.ray_address not in (None, "", "local"):
            kwargs["address"] = config.ray_address
        else:
            cpus = config.workers * config.threads if config.workers > 1 else os.cpu_count()
            kwargs["num_cpus"] = cpus
        ray.init(**kwargs)
    try:
        setup = worker_setup(runner)
        gpu = 1 if runner.device.type == "cuda" else 0
        task = ray.remote(num_cpus=config.threads, num_gpus=gpu, max_retries=0)(_ray_job)
        setup_ref = ray.put(setup)
        pending = {task.remote(setup_ref, job): job for job in spread_checkpoints(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                on_records(ray.get(done[0]))
            except Exception as exc:  # the task's process died
                on_records([{"status": "failed", "label": job.label,
                             "protocol": job.protocol, "batch_size": job.batch_size,
                             "seed": job.seed, "domain": c.domain,
                             "error": f"ray task failed: {type(exc).__name__}: {exc}"}
                            for c in job.cells])
    finally:
        if started_here:
            ray.shutdown()


def _ray_job(setup: WorkerSetup, job: Job) -> list[dict[str, Any]]:
    """A Ray task: rebuild the run once per worker process, compute the job, store its cells,
    and return the small part of each record the driver needs for progress."""
    if _WORKER.get("setup") != setup:
        _init_worker(setup)
        _WORKER["setup"] = setup
    records = _run_in_worker(job)
    keep = ("status", "label", "protocol", "batch_size", "seed", "domain", "error")
    return [{k: r[k] for k in keep if k in r} for r in records]
