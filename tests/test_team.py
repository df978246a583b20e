"""The team stack (`landmark team up`): real PostgreSQL, SeaweedFS (S3), the MLflow tracking
server with logins and a Spark standalone cluster, started by the project's own command on
127.0.0.1; and what a team does against it: `mlflow run . -e main`, readers who browse but
cannot promote, serving, the app and the tagger (local and on the cluster) through the server,
tuning workers sharing one PostgreSQL study, and faults (a killed worker, PostgreSQL restarted,
the object store lost mid-upload). Skipped (with the reason) where the stack's programs are
missing. No mocks: every service is the real program.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from conftest import free_port, make_dataset, make_zip, photo_bytes, start, stop
from test_spark_safety import listening
from test_tagging import library

from landmark import team
from landmark.config import REGISTERED_MODEL, TeamConfig
from landmark.processes import alive

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHAMPION = f"models:/{REGISTERED_MODEL}@champion"


def _missing() -> str:
    try:
        team._pg_bin()
        team._weed()
    except team.TeamError as e:
        return str(e)
    if not shutil.which("java"):
        return "Java is missing (Spark)"
    if os.geteuid() == 0 and subprocess.run(["id", team.PG_OWNER], capture_output=True).returncode:
        return f"as root, PostgreSQL runs as {team.PG_OWNER!r}: that user is missing"
    return ""


pytestmark = [
    pytest.mark.team,
    pytest.mark.skipif(bool(_missing()), reason=f"team stack: {_missing()}"),
]


def stack_folder() -> Path:
    """A folder PostgreSQL's own user can reach (pytest's tmp is closed to others)."""
    folder = Path(tempfile.mkdtemp(prefix="landmark-team-"))
    folder.chmod(0o755)
    return folder


def landmark(*args: str, env: dict | None = None, check: bool = True):
    done = subprocess.run(
        [str(BIN / "landmark"), *args], env=env or os.environ.copy(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


def client_env(stack: team.Stack, user: str, password: str, **extra: str) -> dict[str, str]:
    """A teammate's environment: the server and a login, no S3 or database secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG", "MLFLOW_"))}
    return {
        **env, "MLFLOW_TRACKING_URI": stack.tracking_uri, "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password, "PATH": f"{BIN}{os.pathsep}{env['PATH']}",
        **extra,
    }  # fmt: skip


def as_user(monkeypatch, stack: team.Stack, user: str, password: str, **extra: str) -> None:
    """This test process as a teammate (the in-process tests)."""
    for key, value in client_env(stack, user, password, **extra).items():
        if key.startswith("MLFLOW_"):
            monkeypatch.setenv(key, value)


def database(stack: team.Stack, name: str = "mlflow"):
    import psycopg

    return psycopg.connect(
        host=stack.host, port=stack.ports["postgres"], user=team.DB_USER, dbname=name,
        password=stack.secret("postgres-password"), autocommit=True,
    )  # fmt: skip


def query(stack: team.Stack, sql: str, *args, name: str = "mlflow") -> list[tuple]:
    with database(stack, name) as conn:
        return conn.execute(sql, args).fetchall()


def pipeline(name: str, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / f"{name}.py"), *args], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack():
    """The whole stack, Spark with two workers, for this module; stopped and removed after."""
    folder = stack_folder() / "stack"
    try:
        landmark("team", "up", "--dir", str(folder), "--spark-worker-memory", "1g")
        yield team.Stack.load(folder)
    finally:
        landmark("team", "down", "--dir", str(folder), check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def users(stack):
    """admin, bob (READ) and carol (EDIT): name -> password."""
    passwords = {team.ADMIN: stack.secret("admin-password")}
    for name, permission in (("bob", "READ"), ("carol", "EDIT")):
        done = landmark("team", "user", name, "--permission", permission, "--dir", str(stack.dir))
        path = stack.secret_path(f"user-{name}")
        assert str(path) in done.stderr and path.read_text() not in done.stderr + done.stdout
        passwords[name] = path.read_text()
    return passwords


def local_store_files() -> set[Path]:
    """What a run could leave in the project folder's local store (mlflow run executes there)."""
    found = set((REPO / "mlruns").rglob("*")) if (REPO / "mlruns").exists() else set()
    db = REPO / "mlflow.db"
    return found | ({(db, db.stat().st_mtime)} if db.exists() else set())


@pytest.fixture(scope="module")
def main_run(stack, users, tmp_path_factory):
    """`mlflow run . -e main` as carol (EDIT) on a tiny course-layout zip, against the server."""
    tmp = tmp_path_factory.mktemp("main")
    archive = make_zip(make_dataset(tmp / "landmarks"), tmp / "landmark_images.zip",
                       prefix="landmark_images")  # fmt: skip
    before = local_store_files()
    command = [
        str(BIN / "mlflow"), "run", str(REPO), "-e", "main", "--env-manager", "local",
        "--experiment-name", "landmark", "-P", f"data={archive}",
        "-P", f"cache_dir={tmp / 'cache'}", "-P", "cache_size=64",
    ]  # fmt: skip
    env = client_env(stack, "carol", users["carol"])
    done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    assert local_store_files() == before and not (tmp / "mlruns").exists()
    return done


# --- the stack itself ---------------------------------------------------------------------------


def test_every_service_listens_on_loopback_and_secrets_are_private(stack):
    parents = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
    ours = set(stack.pids.values())
    while True:  # each service with its children
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        if not more:
            break
        ours |= more
    sockets = []
    for pid in ours:
        with contextlib.suppress(FileNotFoundError):  # a short-lived child, gone since
            sockets += listening(pid)
    services = {"postgres", "s3", "tracking", "spark-master", "spark-worker-0", "spark-worker-1"}
    assert services <= set(stack.pids)
    assert sockets and {host for host, _ in sockets} == {"127.0.0.1"}, sockets
    ports = {port for _, port in sockets}
    for name in ("postgres", "s3", "tracking", "spark", "spark_ui"):
        assert stack.ports[name] in ports, name
    assert stat.S_IMODE((stack.dir / "secrets").stat().st_mode) == 0o700
    for path in (stack.dir / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_wrong_password_or_none_is_refused_with_401(stack, users):
    for user, password, said in (("bob", "not-bobs-password", "the login of user 'bob'"),
                                 ("", "", "no login")):  # fmt: skip
        env = client_env(stack, user, password, MLFLOW_EXPERIMENT_NAME="landmark")
        if not user:
            env.pop("MLFLOW_TRACKING_USERNAME")
            env.pop("MLFLOW_TRACKING_PASSWORD")
        refused = pipeline("promote", env)
        assert refused.returncode != 0 and f"refused {said}" in refused.stderr
        assert "(HTTP 401)" in refused.stderr and "Traceback" not in refused.stderr


def test_a_reader_cannot_start_a_training_run(stack, users, tmp_path):
    bob = client_env(stack, "bob", users["bob"], MLFLOW_EXPERIMENT_NAME="landmark")
    cache = tmp_path / "cache"
    refused = pipeline("train_scratch", bob, "--data", str(tmp_path), "--cache-dir", str(cache))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "user 'bob' lacks EDIT permission on experiment 'landmark'" in refused.stderr
    assert not cache.exists()  # refused before any work
    carol = client_env(stack, "carol", users["carol"], MLFLOW_EXPERIMENT_NAME="landmark")
    allowed = pipeline("promote", carol)  # EDIT: her run starts (nothing registered to promote)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_granting_again_replaces_the_permission(stack, users):
    folder = str(stack.dir)
    landmark("team", "user", "dave", "--permission", "READ", "--dir", folder)
    dave = client_env(stack, "dave", stack.secret("user-dave"), MLFLOW_EXPERIMENT_NAME="landmark")
    assert "lacks EDIT permission" in pipeline("promote", dave).stderr
    landmark("team", "user", "dave", "--permission", "EDIT", "--dir", folder)
    allowed = pipeline("promote", dave)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


# --- mlflow run . -e main against the server ----------------------------------------------------


def test_main_lands_in_postgresql_and_the_bucket(stack, users, main_run, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    step = "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid " \
        "WHERE t.key = 'landmark.step' AND t.value = %s"  # fmt: skip
    ((main, status),) = query(stack, step, "main")  # the module's only main run
    children = {name: (run, state) for name, run, state in query(
        stack, "SELECT t.value, r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = "
        "r.run_uuid JOIN tags p ON p.run_uuid = r.run_uuid WHERE t.key = 'landmark.step' AND "
        "p.key = 'mlflow.parentRunId' AND p.value = %s", main)}  # fmt: skip
    assert set(children) == {"prepare", "train_transfer", "train_scratch", "promote"}
    assert {state for _, state in children.values()} == {status} == {"FINISHED"}
    (metrics,) = query(stack, "SELECT count(*) FROM metrics m JOIN tags p ON p.run_uuid = "
                              "m.run_uuid WHERE p.key = 'mlflow.parentRunId'")  # fmt: skip
    assert metrics[0] > 100  # every epoch of every trial
    versions = query(stack, "SELECT version FROM model_versions WHERE name = %s", REGISTERED_MODEL)
    assert sorted(v for (v,) in versions) == [1, 2]
    (champion,) = query(stack, "SELECT version FROM registered_model_aliases WHERE alias = %s",
                        "champion")  # fmt: skip
    (promoted,) = query(stack, "SELECT value FROM params WHERE run_uuid = %s AND key = %s",
                        children["promote"][0], "promoted_version")  # fmt: skip
    assert promoted == (str(champion[0]),)  # promote moved champion to the version it chose
    # The champion's TorchScript file, downloaded through the server by a reader, is the same
    # bytes as an object in the bucket; the client never had S3 keys.
    as_user(monkeypatch, stack, "bob", users["bob"])
    model = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}/{champion[0]}",
                                                dst_path=str(tmp_path))  # fmt: skip
    (torchscript,) = Path(model).rglob("*.pt")
    s3 = team.s3_client(stack)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
            for o in page.get("Contents", [])]  # fmt: skip
    same_name = [k for k in keys if k.endswith(f"/{torchscript.name}")]
    stored = [s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read() for k in same_name]
    assert torchscript.read_bytes() in stored
    run_id = MlflowClient().get_model_version(REGISTERED_MODEL, str(champion[0])).run_id
    assert MlflowClient().get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    pictures = [k for k in keys if run_id in k and k.endswith(".png")]
    assert pictures, "the run's plots are in the bucket"


def test_no_password_lands_in_params_tags_or_logs(stack, users, main_run):
    keys = team._s3_keys(stack)
    hidden = {*users.values(), stack.secret("postgres-password"), stack.secret("flask-secret-key"),
              keys["accessKey"], keys["secretKey"]}  # fmt: skip
    recorded = query(stack, "SELECT value FROM params UNION ALL SELECT value FROM tags "
                            "UNION ALL SELECT value FROM model_version_tags")  # fmt: skip
    texts = [value for (value,) in recorded if value]
    texts += [p.read_text(errors="replace") for p in stack.dir.rglob("*.log")]
    texts += [main_run.stdout, main_run.stderr]
    assert len(texts) > 100
    for secret in hidden:
        assert not any(secret in text for text in texts)


def test_a_reader_compares_runs_but_cannot_move_the_champion(stack, users, main_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    as_user(monkeypatch, stack, "bob", users["bob"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("landmark").experiment_id
    runs = client.search_runs([experiment], "tags.`landmark.step` = 'train_scratch'")
    assert any("test/top1" in r.data.metrics for r in runs)  # he browses and compares
    model = client.get_registered_model(REGISTERED_MODEL)
    champion = model.aliases["champion"]
    other = {"1": "2", "2": "1"}[str(champion)]
    force = ("--version", other, "--force", "true")
    bob = client_env(stack, "bob", users["bob"], MLFLOW_EXPERIMENT_NAME="landmark")
    refused = pipeline("promote", bob, *force)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "user 'bob' lacks EDIT permission on experiment 'landmark'" in refused.stderr
    # In an experiment of his own his run starts, and the registry refuses the alias move.
    own = pipeline("promote", {**bob, "MLFLOW_EXPERIMENT_NAME": "bob-sandbox"}, *force)
    assert own.returncode == 1 and "Traceback" not in own.stderr
    said = f"user 'bob' lacks EDIT permission on registered model '{REGISTERED_MODEL}'"
    assert said in own.stderr
    assert client.get_registered_model(REGISTERED_MODEL).aliases["champion"] == champion


def b64_request(photos: list[bytes]) -> dict:
    import base64

    rows = [[base64.b64encode(p).decode()] for p in photos]
    return {"dataframe_split": {"columns": ["image"], "data": rows}}


def test_a_reader_serves_shows_and_tags_with_the_champion(stack, users, main_run, tmp_path):
    """`mlflow models serve`, `landmark app` and `landmark tag` (local and on the Spark cluster)
    all load the champion through the tracking server with a reader's login."""
    bob = client_env(stack, "bob", users["bob"])
    photo = photo_bytes(size=(448, 336), colour=(40, 40, 220), seed=99)
    port = free_port()
    served = start(
        [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", bob,
    )  # fmt: skip
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=b64_request([photo]),
                               timeout=120)  # fmt: skip
        (prediction,) = answer.json()["predictions"]
    finally:
        stop(served)
    port = free_port()
    app = start([str(BIN / "landmark"), "app", "--port", str(port)],
                f"http://127.0.0.1:{port}/", tmp_path / "app.log", bob)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert "version" in requests.get(f"{base}/api/info", timeout=10).json()["model"]
        shown = requests.post(f"{base}/api/predict", data=photo, timeout=120).json()
    finally:
        stop(app)
    assert shown["label"] == prediction["label"]
    assert shown["probability"] == pytest.approx(prediction["probability"])
    reports = {}
    cluster = ("--engine", "spark", "--spark-master", stack.spark_master)
    for engine, flags in (("local", ()), ("spark", cluster)):
        photos = library(tmp_path / engine)
        report = tmp_path / f"{engine}.jsonl"
        landmark("tag", str(photos), "--plan", "--report", str(report), *flags, env=bob)
        rows = [json.loads(line) for line in report.read_text().splitlines()]
        reports[engine] = {str(Path(r["path"]).relative_to(photos)): r for r in rows}
    local, spark = reports["local"], reports["spark"]
    assert set(local) == set(spark) and len(local) == 6
    for name, row in local.items():
        other = spark[name]
        assert (other["status"], other.get("label")) == (row["status"], row.get("label")), name
        if "probability" in row:
            assert other["probability"] == pytest.approx(row["probability"], abs=1e-5)
    assert {r["status"] for r in local.values()} >= {"error", "has_gps"}


# --- tuning workers on one PostgreSQL study -----------------------------------------------------


def test_three_workers_share_one_postgresql_study(stack, users, tmp_path, monkeypatch):
    """Three `train_scratch` processes at once on one study (as if on three machines)."""
    from mlflow.tracking import MlflowClient

    data = make_dataset(tmp_path / "landmarks")
    storage = stack.database_url("optuna")
    env = client_env(stack, "carol", users["carol"], MLFLOW_EXPERIMENT_NAME="landmark",
                     PGPASSWORD=stack.secret("postgres-password"),
                     OMP_NUM_THREADS="1")  # three workers on this machine's cores  # fmt: skip
    flags = [
        "--data", str(data), "--image-size", "48", "--width", "8", "--depth", "2",
        "--blocks", "1", "--epochs", "2", "--batch-size", "8", "--num-workers", "0",
        "--n-trials", "7", "--pruner", "none", "--held-out", "0", "--timeout", "0",
        "--study-name", "team-scratch", "--storage", storage, "--heartbeat", "5",
    ]  # fmt: skip
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    command = [sys.executable, str(REPO / "pipelines" / "train_scratch.py"), *flags]
    workers = [
        subprocess.Popen(
            [*command, "--cache-dir", str(tmp_path / f"cache-{i}")],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )  # fmt: skip
        for i, log in enumerate(logs)
    ]
    try:
        for worker in workers:
            worker.wait(timeout=400)
    finally:
        for worker in workers:
            worker.kill()
    failed = [log.read_text()[-4000:] for w, log in zip(workers, logs, strict=True) if w.returncode]
    assert not failed, failed
    study = load_study(stack, "team-scratch")
    assert len(study.trials) == 7 and {t.state.name for t in study.trials} == {"COMPLETE"}
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert pids <= {w.pid for w in workers} and len(pids) >= 2  # shared (a late starter: fewer)
    as_user(monkeypatch, stack, "carol", users["carol"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("landmark").experiment_id
    parents = client.search_runs([experiment], f"params.storage = '{storage}'")  # no password
    assert len(parents) == 3 and {p.data.tags["landmark.step"] for p in parents} == {
        "train_scratch"
    }
    trial_runs = client.search_runs([experiment], "tags.`optuna.study` = 'team-scratch'")
    numbers = sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs)
    assert numbers == list(range(7))  # every trial ran once: none lost, none twice
    by_worker = {}
    for trial in study.trials:  # each trial a nested run under its own worker's parent run
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        by_worker.setdefault(trial.user_attrs["pid"], set()).add(
            run.data.tags["mlflow.parentRunId"]
        )
    assert all(len(p) == 1 for p in by_worker.values())
    assert len(set.union(*by_worker.values())) == len(pids)
    assert set.union(*by_worker.values()) <= {p.info.run_id for p in parents}
    # optuna-dashboard opens the same storage, its password from PGPASSWORD too (README).
    port = free_port()
    dashboard = start(
        [str(BIN / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/api/studies", tmp_path / "dashboard.log", env,
    )  # fmt: skip
    try:
        listed = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=30).json()
    finally:
        stop(dashboard)
    assert "team-scratch" in {s["study_name"] for s in listed["study_summaries"]}


def load_study(stack: team.Stack, name: str):
    """The study as this test process sees it (it has no PGPASSWORD: the URL carries it)."""
    import optuna

    return optuna.load_study(study_name=name, storage=stack.database_url("optuna", password=True))


def restart_postgres(stack: team.Stack) -> None:
    data = team._pg_data(stack)
    log = data.parent / "server.log"
    team._pg(stack, "pg_ctl", "-D", str(data), "-l", str(log), "-m", "fast", "-w", "restart")
    stack.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])
    stack.save()


# A tuning worker whose trials report once, then sleep argv[3] seconds (no training: what is
# tested is how workers share a study, not what they train).
WORKER = """
import sys, time
from landmark import search, selection, tracking, tuning
from landmark.config import TuneConfig

def space(trial):
    return {"x": trial.suggest_float("x", 0.0, 1.0)}

def train(params, report, trial):
    report(1, params["x"])
    time.sleep(float(sys.argv[3]))
    return selection.fold_score([params["x"]])

cfg = TuneConfig(n_trials=2, timeout=0, pruner="none", storage=sys.argv[1], heartbeat=1)
with tracking.start_run("worker"):
    tuning.tune(sys.argv[2], space, train, cfg, 0, search.pruner_for(cfg, 1, lambda step: 100))
"""


def wait_for_a_trial_run(stack: team.Stack, study_name: str, worker: subprocess.Popen) -> None:
    """Until the worker's first trial has its MLflow run."""

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            trials = load_study(stack, study_name).trials
        except KeyError:  # no study yet
            trials = []
        if trials and "mlflow_run_id" in trials[0].user_attrs:
            return
        time.sleep(0.5)
    raise AssertionError(f"no trial started (worker exit code {worker.poll()})")


def test_a_killed_workers_trial_is_failed_by_its_heartbeat(stack, users, monkeypatch):
    from mlflow.tracking import MlflowClient

    from landmark import studies
    from landmark.config import TuneConfig

    as_user(monkeypatch, stack, "carol", users["carol"], MLFLOW_EXPERIMENT_NAME="landmark")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGPASSWORD": stack.secret("postgres-password")}
    storage = stack.database_url("optuna")
    studies.storage_for(
        TuneConfig(storage=stack.database_url("optuna", password=True))
    )  # Optuna's tables, made once
    doomed = subprocess.Popen([sys.executable, "-c", WORKER, storage, "killed", "600"], env=env,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_a_trial_run(stack, "killed", doomed)
    finally:
        doomed.kill()  # SIGKILL: no chance to tell anyone
        doomed.wait()
    time.sleep(4)  # past the grace period (3 beats of 1 s)
    survivor = subprocess.run([sys.executable, "-c", WORKER, storage, "killed", "0"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    assert "Trial 0 stopped beating" in survivor.stderr
    study = load_study(stack, "killed")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    run = MlflowClient().get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_postgresql_restarted_between_two_trials_the_study_goes_on(stack, users, monkeypatch):

    from landmark import search, selection, tracking, tuning
    from landmark.config import TuneConfig

    as_user(monkeypatch, stack, "carol", users["carol"], MLFLOW_EXPERIMENT_NAME="landmark")
    monkeypatch.setenv("PGPASSWORD", stack.secret("postgres-password"))
    before = stack.pids["postgres"]

    def space(trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def train(params, report, trial):
        report(1, params["x"])
        if trial.number == 0:  # its last report is in; next: its end, then the next trial
            restart_postgres(stack)
        return selection.fold_score([params["x"]])

    cfg = TuneConfig(n_trials=3, timeout=0, pruner="none", storage=stack.database_url("optuna"))
    with tracking.start_run("restart"):
        study = tuning.tune("restart", space, train, cfg, 0, search.pruner_for(cfg, 1, lambda s: 1))
    assert stack.pids["postgres"] != before and alive(stack.pids["postgres"])
    again = load_study(stack, "restart")
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 3
    assert study.best_trial.number == again.best_trial.number


def test_the_object_store_lost_mid_upload_fails_the_run_and_registers_nothing(
    stack, users, monkeypatch, tmp_path
):
    """The object store stops after the model's first file reached it: the step's run ends
    FAILED with a clear error, no model version appears, no local temporary file is left."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.tracking import MlflowClient

    from landmark import steps, tracking
    from landmark.config import (
        DataConfig,
        OpenSetConfig,
        ScratchConfig,
        ScratchTrainConfig,
        ScratchTuneConfig,
    )

    as_user(monkeypatch, stack, "carol", users["carol"], MLFLOW_EXPERIMENT_NAME="landmark")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    client = MlflowClient()
    versions = len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'"))
    model_files = []
    upload = HttpArtifactRepository.log_artifact

    def log_artifact(self, local_file, artifact_path=None):
        upload(self, local_file, artifact_path)
        if "/models/" in self.artifact_uri:  # a logged model's files (not the run's plots)
            model_files.append(local_file)
            if len(model_files) == 1:
                team._stop(stack.pids["s3"])

    monkeypatch.setattr(HttpArtifactRepository, "log_artifact", log_artifact)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    data = make_dataset(tmp_path / "landmarks")
    data_cfg = DataConfig(data=str(data), cache_dir=str(tmp_path / "cache"), cache_size=64)
    try:
        with pytest.raises(tracking.UploadError, match="did not all reach the artifact store"):
            steps.train_scratch(
                data_cfg, ScratchConfig(image_size=48, width=8, depth=2, blocks=1),
                ScratchTrainConfig(epochs=1, batch_size=8, num_workers=0),
                ScratchTuneConfig(n_trials=0),
                OpenSetConfig(held_out=0),
            )  # fmt: skip
    finally:  # the object store back for the module's other tests (if it was stopped)
        if not alive(stack.pids["s3"]):
            team._start_object_store(stack, TeamConfig(dir=str(stack.dir), host=stack.host,
                                                       bucket=stack.bucket))  # fmt: skip
    assert len(model_files) == 1
    experiment = client.get_experiment_by_name("landmark").experiment_id
    (run, *_) = client.search_runs([experiment], "tags.`landmark.step` = 'train_scratch'",
                                   order_by=["attributes.start_time DESC"])  # fmt: skip
    assert run.info.status == "FAILED"
    (half,) = client.search_logged_models([experiment], f"source_run_id = '{run.info.run_id}'")
    assert half.status.name == "FAILED"  # its files are incomplete: no one may take it
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == versions
    assert not list(temp.iterdir())


# --- up, down, up: the data stays ---------------------------------------------------------------


def test_down_stops_everything_and_up_again_reuses_the_data(monkeypatch):
    from mlflow.tracking import MlflowClient

    folder = stack_folder() / "stack"
    try:
        landmark("team", "up", "--dir", str(folder), "--spark-workers", "0")
        first = team.Stack.load(folder)
        password = first.secret("admin-password")
        status = landmark("team", "status", "--dir", str(folder)).stderr
        assert first.tracking_uri in status and password not in status
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team.ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        experiment = MlflowClient(first.tracking_uri).create_experiment("kept")
        pids = dict(first.pids)
        down = landmark("team", "down", "--dir", str(folder)).stderr
        assert all(name in down for name in ("postgres", "s3", "tracking"))
        assert not any(alive(pid) for pid in pids.values())
        assert (folder / "postgres" / "data" / "PG_VERSION").exists()
        assert "No team stack" in landmark("team", "status", "--dir", str(folder)).stderr
        landmark("team", "up", "--dir", str(folder), "--spark-workers", "0")
        again = team.Stack.load(folder)
        assert again.secret("admin-password") == password  # written once
        assert again.ports == first.ports  # the same URLs for the team
        assert MlflowClient(again.tracking_uri).get_experiment(experiment).name == "kept"
    finally:
        landmark("team", "down", "--dir", str(folder), check=False)
        shutil.rmtree(folder.parent, ignore_errors=True)
