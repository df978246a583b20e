"""Where Optuna studies live and how workers share them: the storage (a journal file, or a
database for workers on several machines), the lock that keeps `n_trials` a study's total,
and what happens to the trial of a worker that died (heartbeats on a database; on a journal,
a process check on this machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from landmark import tracking
from landmark.config import TuneConfig
from landmark.processes import alive

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MLFLOW_RUN = "mlflow_run_id"  # user attribute: the trial's nested MLflow run


def storage_for(cfg: TuneConfig) -> optuna.storages.BaseStorage:
    """`cfg.storage` as an Optuna storage: an SQLAlchemy URL, a journal file path, or by
    default the journal file `optuna.journal` next to the MLflow store.

    A database is shared by workers on several machines: each running trial beats every
    `cfg.heartbeat` seconds, and one silent for three beats (its worker was killed or lost)
    is failed by the next worker that asks for a trial, its MLflow run with it. Connections
    are checked before use, so a restarted database costs no trial.
    """
    if "://" in cfg.storage:
        if tracking.has_password(cfg.storage):
            log.warning("The storage URL holds a password: give it in PGPASSWORD or ~/.pgpass")
        with warnings.catch_warnings():  # Optuna marks heartbeats experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _database(cfg)
    path = _journal(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open-lock variant works on every file system (the symlink lock does not on some).
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


def _database(cfg: TuneConfig) -> optuna.storages.RDBStorage:
    # Workers starting at once on an empty database would all create Optuna's tables, and all
    # but one fail (PostgreSQL: duplicate key ... pg_type): one at a time.
    with _postgres_lock(cfg.storage, _key("optuna schema")):
        return optuna.storages.RDBStorage(
            cfg.storage,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=cfg.heartbeat,
            grace_period=3 * cfg.heartbeat,
            heartbeat_stale_trial_callback=_stale_trial_failed,
        )


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+"))


def _key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def _postgres_lock(url: str, key: int):
    """Hold PostgreSQL's advisory lock `key` on its own connection (no-op for other URLs)."""
    if not _is_postgres(url):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _journal(cfg: TuneConfig) -> Path:
    default = tracking.store_dir() / "optuna.journal"
    return Path(cfg.storage).expanduser() if cfg.storage else default


# report(step, value): tell Optuna a trial's validation accuracy after `step` epochs or folds;
# raises optuna.TrialPruned when the trial should stop.


class AskLock:
    """A lock over the study's workers, held from counting its trials until the next one is
    asked: two workers never both take the last trial. A PostgreSQL advisory lock (its
    connection's: a lost worker releases it), a file lock beside a journal, else none."""

    def __init__(self, cfg: TuneConfig, study_name: str) -> None:
        self.cfg, self.key = cfg, _key(study_name)
        self.held: contextlib.ExitStack | None = None

    def __enter__(self) -> AskLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.held is None:
            held = contextlib.ExitStack()
            held.enter_context(self._lock())
            self.held = held

    def release(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            with contextlib.suppress(Exception):  # a dropped connection released it already
                held.close()

    def _lock(self) -> contextlib.AbstractContextManager:
        if _is_postgres(self.cfg.storage):
            return _postgres_lock(self.cfg.storage, self.key)
        if "://" not in self.cfg.storage:
            path = _journal(self.cfg)
            return _file_lock(path.with_name(path.name + ".ask.lock"))
        return contextlib.nullcontext()


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def heartbeat(study: optuna.Study) -> bool:
    interval = getattr(study._storage, "get_heartbeat_interval", None)  # databases have it
    return interval is not None and interval() is not None


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose workers stopped beating (a database's heartbeats; else nothing)."""
    if heartbeat(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def taken(study: optuna.Study) -> int:
    """Trials finished or running (here or on another worker)."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def _stale_trial_failed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna failed `trial` of a worker that stopped beating: end its MLflow run too."""
    run_id = trial.user_attrs.get(MLFLOW_RUN)
    log.warning("Trial %d stopped beating (worker %s, pid %s): failed", trial.number,
                trial.user_attrs.get("host"), trial.user_attrs.get("pid"))  # fmt: skip
    if run_id:
        try:
            tracking.end_run(run_id, "KILLED")
        except Exception:  # noqa: BLE001 - Optuna calls this unguarded: the study must go on
            log.exception("Could not end trial %d's MLflow run %s", trial.number, run_id)


def fail_orphans(study: optuna.Study) -> None:
    """Mark trials left RUNNING by a killed process on this machine as failed."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid is not None and not alive(pid):
            log.warning("Trial %d was left running by process %d: marked failed", trial.number, pid)
            study.tell(trial.number, state=TrialState.FAIL)
