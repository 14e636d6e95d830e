"""Executors: one run in a worker (``run_one``), the local process pool (worker deaths
requeued, a broken pool replaced) and Dask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable

from grapes_hw.errors import ConfigError
from grapes_hw.studies.spec import RunSpec
from grapes_hw.studies.store import error_line, exception_summary

MAX_WORKER_DEATHS = 3
"""A run whose worker process died this many times is recorded as an error."""

CRASH_ONCE_ENV = "GRAPES_HW_SWEEP_CRASH_ONCE"
"""Test hook: a marker file path; the first run to create it kills its worker (os._exit)."""


# ---- one run, in a worker ------------------------------------------------------------------
def run_one(config: dict, key: str, threads: int | None = None) -> dict:
    """Train one configuration (in a worker process); never raises for a failing run."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, f"{os.getpid()} {key}\n".encode())
            os.close(fd)
            os._exit(77)
    t0 = time.time()
    try:
        from grapes_hw.training.config import TrainConfig
        from grapes_hw.training.train import run

        if threads:
            _limit_threads(int(threads))
        cfg = TrainConfig.from_flat(**{**config, "layers": tuple(config["layers"])})
        result = run(cfg)
    except Exception as e:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        rec = error_record(key, config, traceback.format_exc(), type(e).__name__,
                           seconds=time.time() - t0, summary=exception_summary(e))
    else:
        rec = {"key": key, **result}
    rec["worker"] = {"host": socket.gethostname(), "pid": os.getpid(), "started": t0,
                     "finished": time.time(), "threads": threads}
    return rec


def _limit_threads(n: int) -> None:
    """``n`` torch threads per worker: with several workers per machine, pools sized to all
    cores in every worker fight each other (spin-waiting OpenMP threads made runs several
    times slower). The numba kernels left (the fixed-point write) are serial."""
    import torch

    torch.set_num_threads(n)


def error_record(key: str, config: dict, text: str, kind: str = "Error",
                 seconds: float = 0.0, summary: str | None = None) -> dict:
    """A failed run's record: ``error`` the traceback (or message), ``error_summary`` one
    line for progress lines and reports (``store.error_line``)."""
    return {"key": key, "status": "error", "error": text, "error_type": kind,
            "error_summary": summary or error_line({"error": text}),
            "config": config, "epochs": [], "best_test_acc": None, "final_test_acc": None,
            "slowness": None, "seconds_total": seconds}


# ---- executors -----------------------------------------------------------------------------
Submit = Callable[[dict], None]


def _run_local(specs: list[RunSpec], workers: int, threads: int | None,
               on_result: Submit) -> None:
    """ProcessPoolExecutor; a broken pool (a worker died) is rebuilt and its runs resubmitted."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("forkserver")
    # Imported once in the fork server, so each worker forks ready to train.
    ctx.set_forkserver_preload(["grapes_hw.training.train", "grapes_hw.studies.sweep",
                                "grapes_hw.data.datasets",
                                "sklearn.datasets", "sklearn.model_selection"])
    pending = deque(specs)
    deaths: Counter[str] = Counter()
    inflight: dict = {}

    def new_pool():
        # The fork server outlives a sweep (one per process), so the test hook's variable is
        # handed to each new worker rather than inherited from whenever the server started.
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_init,
                                   initargs=({CRASH_ONCE_ENV: os.environ.get(CRASH_ONCE_ENV)},
                                             os.getpid()))

    pool = new_pool()
    try:
        while pending or inflight:
            # At most `workers` runs in flight, so every in-flight run is really running.
            with _signals_deferred():
                while pending and len(inflight) < workers:
                    s = pending.popleft()
                    inflight[pool.submit(run_one, s.config_dict(), s.key, threads)] = s
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for f in done:
                s = inflight.pop(f)
                try:
                    on_result(f.result())
                except BrokenProcessPool:
                    broken = True
                    _requeue(s, deaths, pending, on_result)
                except Exception:  # noqa: BLE001 - e.g. a result that cannot be pickled
                    on_result(error_record(s.key, s.config_dict(), traceback.format_exc(),
                                           "WorkerError"))
            if broken:
                for f, s in list(inflight.items()):
                    if f.done() and not f.cancelled() and f.exception() is None:
                        on_result(f.result())
                    else:
                        _requeue(s, deaths, pending, on_result)
                inflight.clear()
                _discard_broken_pool(pool)
                pool = new_pool()
    finally:
        if inflight:  # interrupted (Ctrl-C, SIGTERM) or failed: stop the runs still going
            _kill_workers(pool)
        pool.shutdown(wait=not inflight, cancel_futures=True)


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    ``submit`` starts a worker, and waits for the fork server to fork it (seconds, the first
    time: the server imports torch first). Interrupted there, the sweep did not yet know the
    worker's pid, so could not kill it; the worker, born after the sweep had gone, printed a
    traceback on finding the pool's semaphores removed. Delivered after ``submit``, the
    interrupt finds every worker in the pool, where the ``finally`` kills it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda n, _f: caught.append(n)) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


ORPHAN_CHECK_S = 1.0
"""How often (seconds) a worker checks that the sweep process that started it still lives."""


def _worker_init(env: dict[str, str | None], sweep_pid: int) -> None:
    """Worker initializer: set (or clear) these environment variables, and exit when the
    sweep process dies.

    The workers are children of the fork server, not of the sweep, so a sweep killed with
    SIGKILL (or by a scheduler's hard limit) left them training their current run to the end,
    a whole CPU each for up to an hour, for a result nobody would record."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    threading.Thread(target=_exit_when_orphaned, args=(sweep_pid,), daemon=True,
                     name="grapes-hw-orphan-check").start()


def _exit_when_orphaned(sweep_pid: int) -> None:
    while True:
        time.sleep(ORPHAN_CHECK_S)
        try:
            os.kill(sweep_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, under another user (pid reused): keep going
            pass


def _kill_workers(pool) -> None:
    """Kill the pool's worker processes (their runs are requeued or abandoned by the caller).

    ``shutdown(cancel_futures=True)`` cancels only queued runs: a worker in the middle of a
    run would finish it first, however long it takes."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if p.is_alive():
                p.kill()
        except (OSError, ValueError):  # already reaped or closed
            pass


def _discard_broken_pool(pool) -> None:
    """Shut down a pool one of whose workers died, killing the survivors first.

    CPython 3.11's executor does not always terminate the surviving workers of a broken pool:
    seen here, a survivor stayed blocked reading the call queue while ``shutdown(wait=True)``
    joined it forever (a hung sweep, and a hung test under load). Their runs have already
    been requeued, so nothing is lost by killing them."""
    _kill_workers(pool)
    pool.shutdown(wait=True, cancel_futures=True)


def _requeue(s: RunSpec, deaths: Counter, pending: deque, on_result: Submit) -> None:
    deaths[s.key] += 1
    if deaths[s.key] >= MAX_WORKER_DEATHS:
        on_result(error_record(s.key, s.config_dict(),
                               f"the worker process running this run died "
                               f"{deaths[s.key]} times", "WorkerDied"))
    else:
        pending.appendleft(s)


def _run_dask(specs: list[RunSpec], client, on_result: Submit) -> None:
    """Submit every run to a Dask cluster; a worker that dies has its run rescheduled."""
    from distributed import as_completed

    token = hashlib.sha256(f"{os.getpid()} {time.time()}".encode()).hexdigest()[:8]
    futures = {}
    for s in specs:
        f = client.submit(run_one, s.config_dict(), s.key, 1, key=f"grapes-run-{s.key}-{token}",
                          pure=False, retries=2)
        futures[f] = s
    for f in as_completed(list(futures)):
        s = futures.pop(f)
        try:
            res = f.result()
        except Exception as e:  # noqa: BLE001 - KilledWorker (died too often), lost data
            res = error_record(s.key, s.config_dict(), "".join(
                traceback.format_exception_only(type(e), e)), type(e).__name__,
                summary=exception_summary(e))
        on_result(res)
        f.release()


def _with_dask(todo: list[RunSpec], scheduler: str | None, dask_local: int | None,
               on_result: Submit) -> None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise ConfigError("--scheduler" if scheduler else "--dask-local",
                          "needs dask[distributed] (pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as e:  # ValueError: not an address
            raise ConfigError("--scheduler", f"cannot connect to {scheduler}: {e} (expected "
                                             "a scheduler address such as "
                                             "tcp://host:8786)") from None
        with client:
            _run_dask(todo, client, on_result)
        return
    with LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        _run_dask(todo, client, on_result)
