"""The tagger's Spark engine: photos scored by `mlflow.pyfunc.spark_udf` on a Spark cluster.

`SparkScorer` is a `tagging.Scorer`: the tagger's one loop triages and records on the driver;
Spark reads each file on the executors (`read_photos`) and scores it. Local mode (`local[2]`) by
default; needs Java 17. The web UI is off unless asked for, and then on 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from landmark import tracking
from landmark.runtime import images
from landmark.runtime.contract import ModelMetadata
from landmark.runtime.predictor import NO_ANSWER

# The pyfunc's answers as a Spark struct (errors="report": bad photos carry `error`).
# MLflow cannot convert a missing (None) nested struct, so `location` is looked up afterwards.
SPARK_RESULT = (
    "struct<label: string, name: string, probability: double, known: boolean, novelty: double,"
    " error: string,"
    " top_k: array<struct<label: string, name: string, probability: double>>>"
)
# A file as read on an executor: its bytes, or b"" and why it could not be read.
SPARK_FILE = "struct<content: binary, error: string>"
# Photos per Arrow batch handed to a Python UDF: a few photos in memory at a time, and never more
# than an endpoint answers per request (`ServeConfig.max_rows`).
BATCH_ROWS = 8
# The largest photo file Spark reads: a batch's bytes cross the JVM (and Arrow's 2 GB offsets),
# so BATCH_ROWS of them must fit in the driver's default 1 GB with room to spare.
SPARK_MAX_BYTES = 64_000_000
LOOPBACK = "127.0.0.1"


class SparkScorer:
    """Scores all pending photos in one Spark job, then answers them in the given order."""

    def __init__(
        self, model_uri: str, metadata: ModelMetadata, master: str, ui: bool = False
    ) -> None:
        check_ui(master, ui)
        self.model_uri, self.metadata, self.master, self.ui = model_uri, metadata, master, ui

    def score(
        self, photos: Iterable[tuple[Path, bytes]], top_k: int, threshold: float | None
    ) -> Iterator[tuple[Path, bytes | None, dict[str, Any]]]:
        pending = [photo for photo, _ in photos]  # Spark reads the files itself: drop the bytes
        if not pending:
            return
        source = [str(p.resolve()) for p in pending]
        answers = spark_answers(source, self.model_uri, top_k, threshold, self.master, self.ui)
        for photo, answer in zip(pending, answers, strict=True):
            if answer is None:
                answer = {"error": "not scored by Spark (no answer came back for this path)"}
            location = self.metadata.location(answer.get("label"))
            answer["location"] = dataclasses.asdict(location) if location else None
            yield photo, None, answer


def spark_answers(
    source: list[str],
    model_uri: str,
    top_k: int,
    threshold: float | None,
    master: str,
    ui: bool = False,
) -> list[dict[str, Any] | None]:
    """Score photo files with `mlflow.pyfunc.spark_udf` on Spark; one answer per path of
    `source`, in order (None: none came back).

    Paths are data, never patterns (`[`, `*`, `?` are plain characters), and travel as bytes
    (a name that is not UTF-8 stays itself). Each file is read on an executor by `read_photos`;
    a file that cannot be read answers an error, the job goes on.
    """
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import _parse_datatype_string

    spark = start_session(master, ui)
    try:
        rows = [(i, os.fsencode(path)) for i, path in enumerate(source)]
        paths = spark.createDataFrame(rows, "id long, path binary")
        read = pandas_udf(read_photos, SPARK_FILE).asNondeterministic()  # read each file once
        files = paths.select("id", read("path").alias("file")).select("id", "file.*")
        params: dict[str, Any] = {"top_k": top_k, "errors": "report"}
        if threshold is not None:
            params["threshold"] = threshold
        udf = tracking.spark_udf(spark, model_uri, _parse_datatype_string(SPARK_RESULT), params)
        scored = files.select("id", "error", udf("content").alias("answer")).collect()
    finally:
        spark.stop()
    answers: list[dict[str, Any] | None] = [None] * len(source)
    for row in scored:
        answers[row["id"]] = _answer(row)
    return answers


def _answer(row: Any) -> dict[str, Any]:
    """The pyfunc's answer as `Predictor.predict` gave it, with the read error of a file that
    could not be read (the pyfunc saw b"" and said "zero-byte file").

    mlflow's spark_udf casts each string field of a batch with `astype(str)` once any row has a
    value: a None becomes "nan" (or "None"), a missing probability NaN. An answer is an error
    exactly when it ranks no landmark, so its `top_k` says which fields are real.
    """
    answer = row["answer"].asDict(recursive=True)
    if answer["top_k"]:
        return {**answer, "error": None}
    return {**NO_ANSWER, "error": row["error"] or answer["error"] or "the model gave no answer"}


def start_session(master: str, ui: bool = False) -> Any:
    """The tagger's SparkSession: UI off unless `ui`, and then on 127.0.0.1 only; with a local
    master every socket of the driver is on 127.0.0.1.

    Spark's WebUI binds to SPARK_LOCAL_IP, else to every interface, and has no login. The team
    stack's standalone master (8080) and worker (8081) UIs are the same WebUI without a login:
    they must be bound the same way there (SPARK_LOCAL_IP=127.0.0.1, issue 17).
    """
    from pyspark.sql import SparkSession

    check_ui(master, ui)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need our packages too
    builder = (
        SparkSession.builder.master(master)
        .appName("landmark-tag")
        .config("spark.ui.enabled", str(ui).lower())
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
    )
    # A local master, or a cluster on this machine's loopback (the team stack): every
    # executor is on this machine, so the driver need not listen on any other interface.
    if _is_local(master) or _on_loopback(master):  # (check_ui: a UI only with a local one)
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK  # read when this process starts its Spark JVM
        builder = builder.config("spark.driver.bindAddress", LOOPBACK)
        builder = builder.config("spark.driver.host", LOOPBACK)
    spark = builder.getOrCreate()
    jvm_local_ip = spark.sparkContext._jvm.java.lang.System.getenv("SPARK_LOCAL_IP")
    if ui and jvm_local_ip != LOOPBACK:
        spark.stop()
        raise RuntimeError(
            f"this process's Spark JVM was started with SPARK_LOCAL_IP={jvm_local_ip}, so its "
            "web UI would listen on every interface: run the tagger in a fresh process, "
            "or without the Spark UI (spark_ui=False)"
        )
    return spark


def check_ui(master: str, ui: bool) -> None:
    """Refuse the web UI with a cluster master: the UI is bound to 127.0.0.1 through
    SPARK_LOCAL_IP, which would also make the driver unreachable for remote executors."""
    if ui and not _is_local(master):
        raise ValueError(
            f"the Spark UI (spark_ui=True) can only be started with a local master, got "
            f"{master!r}: use the cluster's own UI (bound to 127.0.0.1 there, issue 17) "
            "or spark_ui=False"
        )


def _is_local(master: str) -> bool:
    return master.split("[")[0] in {"local", "local-cluster"}


def _on_loopback(master: str) -> bool:
    """spark://127.0.0.1:7077 or spark://localhost:7077 (a standalone master here)."""
    host = master.removeprefix("spark://").rsplit(":", 1)[0]
    return master.startswith("spark://") and host in {LOOPBACK, "localhost"}


def read_photos(paths: pd.Series) -> pd.DataFrame:
    """Each file's bytes, or b"" and why it cannot be read (`images.read_photo`: never blocks
    on a FIFO or device, never reads past `SPARK_MAX_BYTES`); the `SPARK_FILE` pandas UDF."""
    contents, errors = [], []
    for path in paths:  # bytes (os.fsencode) or str
        try:
            contents.append(images.read_photo(path, SPARK_MAX_BYTES))
            errors.append(None)
        except images.BadImageError as e:
            contents.append(b"")
            errors.append(str(e))
    return pd.DataFrame({"content": contents, "error": errors})
