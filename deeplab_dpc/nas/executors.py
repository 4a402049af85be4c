"""Where trials run: worker processes on this machine, or Ray tasks; and the driver that watches them.

``run_search(config)`` prepares the search (config check, study, recovery of
interrupted trials, the reference cells), starts ``num_workers`` workers, and
then watches: it reports finished trials (``progress.SearchProgress``),
interrupts the trials of a worker that died and starts another one, and
returns when every worker has stopped.

Every worker runs ``worker.run_worker`` against the shared study storage, so
the executors only start and watch processes:

* ``local``: ``multiprocessing`` spawn processes, each with its output in
  ``<search_dir>/workers/<id>.log``. A worker dies with the driver (Linux
  parent-death signal, and a check of its parent on every heartbeat), so a
  killed search leaves no orphan training.
* ``ray``: one Ray task per worker (``num_gpus=1`` each where the cluster has
  GPUs), ``max_retries=0``: a lost task's trial is retried by the search
  itself, once. Ray is imported only here (``pip install -e .[ray]``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, TextIO

from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import BEST_PROXY_CELL, SearchConfig, prepare_search_dir
from deeplab_dpc.nas.worker import WorkerSetupError, run_worker

SETUP_FAILED_EXIT = 3  # A local worker's exit code when its objective could not be built.
_PR_SET_PDEATHSIG = 1


class SearchError(RuntimeError):
    """The search cannot go on (a worker cannot build its objective, Ray is missing, ...)."""


# --------------------------------------------------------------------------- worker entry points


def _die_with_parent(parent_pid: int) -> None:
    """Ends this process when the driver dies (Linux prctl; elsewhere a polling thread)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # The parent died before prctl took effect.
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="dpc-parent-watch", daemon=True).start()


def _pin_gpu(index: int) -> None:
    """With several GPUs listed in CUDA_VISIBLE_DEVICES, worker i gets the i-th (round robin)."""
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(devices) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]


def cpu_threads_per_worker(num_workers: int, cpus: int | None = None) -> int:
    """TensorFlow threads each of ``num_workers`` local workers gets: the machine's cores shared out.
    On 2 cores, 2 workers of 1 thread each finish CamVid proxy trials about 1.3x faster than 1
    worker of 2 threads (BENCHMARKS.md): tracing a new cell's graph is single-threaded."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, int(num_workers)))


def _share_cpu_threads(num_workers: int) -> None:
    """Before TensorFlow starts: this worker's share of the cores (a user's own setting wins)."""
    if int(num_workers) > 1:
        threads = str(cpu_threads_per_worker(num_workers))
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", threads)


def _local_worker_main(config_dict: dict, worker: str, index: int, log_path: str, parent_pid: int, deadline):
    _die_with_parent(parent_pid)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)  # TensorFlow's C++ logs too
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _share_cpu_threads(config_dict.get("num_workers", 1))
    _pin_gpu(index)
    # SIGTERM ends the worker like Ctrl-C: its running trial is marked interrupted and retried.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    config = SearchConfig.from_dict(config_dict)
    print(f"worker {worker} (pid {os.getpid()}) on {socket.gethostname()}", flush=True)
    try:
        report = run_worker(config, worker, deadline=deadline)
    except WorkerSetupError as e:
        print(f"setup failed: {e}", flush=True)
        os._exit(SETUP_FAILED_EXIT)
    print(f"worker {worker} stopped: {report.stopped_because} ({report})", flush=True)


def _ray_worker_main(config_dict: dict, worker: str, deadline) -> dict:
    config = SearchConfig.from_dict(config_dict)
    report = run_worker(config, worker, deadline=deadline)
    return {"stopped_because": report.stopped_because, "trained": report.trained}


# --------------------------------------------------------------------------- executors


class LocalExecutor:
    """Workers as spawned processes on this machine."""

    def __init__(self, config: SearchConfig, driver_id: str, deadline: float | None):
        self.config = config
        self.driver_id = driver_id
        self.deadline = deadline
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[str, Any] = {}
        self._count = 0

    def log_path(self, worker: str) -> str:
        return os.path.join(self.config.search_dir, "workers", worker.replace(":", "_") + ".log")

    def start_worker(self) -> str:
        worker = f"{self.driver_id}:local-{self._count}"
        proc = self._ctx.Process(
            target=_local_worker_main,
            args=(
                self.config.to_dict(),
                worker,
                self._count,
                self.log_path(worker),
                os.getpid(),
                self.deadline,
            ),
            name=f"dpc-worker-{self._count}",
        )
        self._count += 1
        proc.start()
        self._procs[worker] = proc
        return worker

    def poll(self) -> list[tuple[str, str, str]]:
        """Workers that ended since the last call: (worker, how, detail); how is "ok", "setup" (could
        not build its objective), "killed" (SIGKILL from outside: the OOM killer, an operator) or
        "died" (any other end: an exception, a crash)."""
        ended = []
        for worker, proc in list(self._procs.items()):
            if proc.is_alive():
                continue
            proc.join()
            del self._procs[worker]
            code = proc.exitcode
            if code == 0:
                ended.append((worker, "ok", ""))
            elif code == SETUP_FAILED_EXIT:
                ended.append((worker, "setup", _tail(self.log_path(worker))))
            else:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                ended.append(
                    (
                        worker,
                        "killed" if code == -signal.SIGKILL else "died",
                        f"{how}; log {self.log_path(worker)}:\n{_tail(self.log_path(worker))}",
                    )
                )
        return ended

    def running(self) -> int:
        return len(self._procs)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs.clear()


class RayExecutor:
    """Workers as Ray tasks (one GPU each where the cluster has GPUs)."""

    def __init__(self, config: SearchConfig, driver_id: str, deadline: float | None):
        try:
            import ray  # noqa: PLC0415
        except ImportError as e:
            raise SearchError(
                f"executor=ray needs Ray, which is not installed ({e}): pip install -e .[ray]"
            ) from None
        self._ray = ray
        self.config = config
        self.driver_id = driver_id
        self.deadline = deadline
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(
                address=config.ray_address or None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                # Tasks import the objective by name: let them see what this process sees.
                runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _pythonpath()}},
            )
        gpus = ray.cluster_resources().get("GPU", 0)
        self._remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)(_ray_worker_main)
        self._refs: dict[Any, str] = {}
        self._count = 0

    def start_worker(self) -> str:
        worker = f"{self.driver_id}:ray-{self._count}"
        self._count += 1
        self._refs[self._remote.remote(self.config.to_dict(), worker, self.deadline)] = worker
        return worker

    def poll(self) -> list[tuple[str, str, str]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        ended = []
        for ref in ready:
            worker = self._refs.pop(ref)
            try:
                self._ray.get(ref)
                ended.append((worker, "ok", ""))
            except self._ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, WorkerSetupError) or "WorkerSetupError" in str(e):
                    ended.append((worker, "setup", str(e.cause or e)))
                else:
                    ended.append((worker, "died", str(e)[-2000:]))
            except Exception as e:  # noqa: BLE001  (WorkerCrashedError, NodeDiedError, ...): lost from outside
                ended.append((worker, "killed", f"{type(e).__name__}: {e}"[-2000:]))
        return ended

    def running(self) -> int:
        return len(self._refs)

    def stop(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started_ray:
            self._ray.shutdown()


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def _pythonpath() -> str:
    return os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)


def _tail(path: str, chars: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- the driver


def prepare(config: SearchConfig):
    """Checks and writes the search config, creates the study, interrupts trials left running by a
    killed search (queueing their retries) and queues the reference cells. Returns the study and
    what was recovered."""
    prepare_search_dir(config)
    with trial_store.FileLock(config.lock_path):  # two drivers starting at once create one study
        study = study_lib.load_study(config, create=True)
        recovered = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
        enqueued = trial_store.enqueue_reference_cells(study) if config.enqueue_published else []
    return study, recovered, enqueued


def run_search(
    config: SearchConfig,
    *,
    stream: TextIO | None = None,
    poll_seconds: float = 1.0,
    max_worker_deaths: int | None = None,
) -> dict[str, Any]:
    """Runs the search to its budget; returns a summary (counts, best trial, its cell file).

    Raises ``SearchError`` if a worker cannot build its objective or workers keep dying.
    """
    from deeplab_dpc.nas import progress as progress_lib  # noqa: PLC0415  (not in the workers: no cv2 there)

    stream = stream or sys.stderr
    start = time.time()
    deadline = start + config.max_hours * 3600 if config.max_hours is not None else None
    study, recovered, enqueued = prepare(config)
    trials = trial_store.all_trials(study)
    report = progress_lib.SearchProgress(config, known=trials, stream=stream)
    report.message(
        f"search in {config.search_dir}: strategy {config.strategy}, {config.max_trials} trials"
        + (f" or {config.max_hours:g} h" if config.max_hours else "")
        + f", {config.num_workers} {config.executor} workers"
    )
    report.message(f"  dashboard:   optuna-dashboard {config.storage}")
    report.message(f"  tensorboard: tensorboard --logdir {config.tensorboard_dir}")
    for number, retry in recovered:
        report.message(
            f"trial {number} was interrupted; "
            + (f"retried as trial {retry}" if retry is not None else "not retried")
        )
    if enqueued:
        report.message(f"queued the published Cityscapes cell and an ASPP cell as trials {enqueued}")
    executor = EXECUTORS[config.executor](config, trial_store.driver_id(), deadline)
    max_deaths = (
        max_worker_deaths if max_worker_deaths is not None else 2 * config.max_trials + config.num_workers
    )
    deaths = crashes = 0
    last_recovery = time.time()
    try:
        for _ in range(config.num_workers):
            executor.start_worker()
        while True:
            ended = executor.poll()
            for worker, how, detail in ended:
                if how == "setup":
                    raise SearchError(f"worker {worker} could not build its objective:\n{detail}")
                if how in ("died", "killed"):
                    deaths += 1
                    with trial_store.FileLock(config.lock_path):
                        lost = trial_store.recover_interrupted(
                            study,
                            config.space,
                            config.grace_seconds,
                            worker=worker,
                            reason=f"worker {worker} died",
                        )
                    report.message(
                        f"worker {worker} died ({detail.splitlines()[0] if detail else 'no detail'})"
                    )
                    for number, retry in lost:
                        report.message(
                            f"trial {number} was interrupted; "
                            + (f"retried as trial {retry}" if retry is not None else "not retried")
                        )
                    # A worker that dies holding no trial crashed outside any trial: a bug or a broken
                    # environment, which a new worker would meet again. One killed from outside
                    # (SIGKILL, a lost Ray node) says nothing about that; the limit on deaths holds.
                    if lost:
                        crashes = 0
                    elif how == "died":
                        crashes += 1
                    if deaths > max_deaths or crashes >= 3:
                        raise SearchError(
                            f"{deaths} workers died ({crashes} holding no trial); the last:\n{detail}"
                        )
            trials = trial_store.all_trials(study)
            if time.time() - last_recovery > config.grace_seconds / 2:
                # Trials of workers elsewhere (another driver, a lost Ray node) that went silent.
                with trial_store.FileLock(config.lock_path):
                    for number, retry in trial_store.recover_interrupted(
                        study, config.space, config.grace_seconds
                    ):
                        report.message(f"trial {number} went silent; retried as trial {retry}")
                last_recovery = time.time()
                trials = trial_store.all_trials(study)
            # Replace workers that died while there is work left.
            if any(how in ("died", "killed") for _, how, _ in ended):
                work_left = trial_store.budget_used(trials) < config.max_trials or any(
                    t.state.name == "WAITING" and t.user_attrs.get(trial_store.RETRY_OF) is not None
                    for t in trials
                )
                if work_left and (deadline is None or time.time() < deadline):
                    while executor.running() < config.num_workers:
                        executor.start_worker()
            report.update(trials, executor.running())
            if executor.running() == 0:
                break
            time.sleep(poll_seconds)
    finally:
        executor.stop()
    trials = trial_store.all_trials(study)
    report.update(trials, 0)
    report.close(trials)
    best = progress_lib.best_trials(trials, 1)
    summary = {
        "trials": len(trials),
        "completed": sum(t.state.name == "COMPLETE" and not trial_store.is_duplicate(t) for t in trials),
        "failed": sum(t.state.name == "FAIL" and trial_store.counts_toward_budget(t) for t in trials),
        "duplicates": sum(trial_store.is_duplicate(t) for t in trials),
        "prefiltered": sum(trial_store.is_prefiltered(t) for t in trials),
        "interrupted": sum(trial_store.is_interrupted(t) for t in trials),
        "best_trial": best[0].number if best else None,
        "best_value": trial_store.trial_score(best[0]) if best else None,
        "best_cell": os.path.join(config.search_dir, BEST_PROXY_CELL) if best else None,
        "seconds": time.time() - start,
    }
    if best:
        report.message(
            f"best proxy mIoU {trial_store.trial_score(best[0]):.4f} in trial {best[0].number}: {summary['best_cell']}"
            f" (train it with --dense_prediction_cell_json={summary['best_cell']})"
        )
    return summary
