"""The tagger's Spark engine: photos scored by `mlflow.pyfunc.spark_udf` on a Spark cluster.

The driver triages photos (resume, GPS) and records the outcomes with `tagging.Tagger`; Spark
only scores. Local mode (`local[2]`) by default; needs Java 17.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from landmark.tagging import Tagger

# Spark: the pyfunc's answers as a Spark struct (errors="report": bad photos carry `error`).
# MLflow cannot convert a missing (None) nested struct, so `location` is looked up afterwards.
SPARK_RESULT = (
    "struct<label: string, name: string, probability: double, known: boolean, error: string,"
    " top_k: array<struct<label: string, name: string, probability: double>>>"
)


def spark_answers(
    source: list[str], model_uri: str, top_k: int, threshold: float | None, master: str
) -> dict[str, dict[str, Any]]:
    """Score photos with `mlflow.pyfunc.spark_udf` on Spark; {path: answer}.

    `source` is a list of photo files (read as Spark's `binaryFile`), or one Parquet data set
    with columns `path` and `content`.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.types import _parse_datatype_string

    from landmark import tracking

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need our packages too
    spark = SparkSession.builder.master(master).appName("landmark-tag").getOrCreate()
    try:
        if len(source) == 1 and source[0].endswith(".parquet"):
            frame = spark.read.parquet(source[0])
        else:
            frame = spark.read.format("binaryFile").load(source)
        params = {"top_k": top_k, "errors": "report"}
        if threshold is not None:
            params["threshold"] = threshold
        udf = tracking.spark_udf(spark, model_uri, _parse_datatype_string(SPARK_RESULT), params)
        rows = frame.select("path", udf("content").alias("answer")).collect()
    finally:
        spark.stop()
    return {_local_path(row["path"]): row["answer"].asDict(recursive=True) for row in rows}


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://") if uri.startswith("file:///") else uri.removeprefix("file:")


def tag(
    photos: list[Path],
    model_uri: str,
    tagger: Tagger,
    locations: dict[str, dict],
    threshold: float | None = None,
    master: str = "local[2]",
) -> Iterator[dict[str, Any]]:
    """Triage here, score on Spark, then record the outcomes here in path order.

    `locations` (the model's metadata) maps labels to places.
    """
    pending = []
    for photo in tqdm(photos, desc="checking", unit="photo"):
        row, _ = tagger.triage(photo)
        if row is not None:
            yield tagger.write(row)
        else:
            pending.append(photo)
    if not pending:
        return
    answers = spark_answers(
        [str(p.resolve()) for p in pending], model_uri, tagger.cfg.top_k, threshold, master
    )
    for photo in tqdm(pending, desc="recording", unit="photo"):
        answer = answers.get(str(photo.resolve()))
        if answer is None:
            answer = {"error": "not scored by Spark (vanished during the run?)"}
        answer["location"] = locations.get(answer.get("label") or "")
        # Spark read the photo already; the bytes are needed again only for a GPS copy.
        try:
            data = photo.read_bytes() if tagger.cfg.gps_copies else b""
        except OSError as e:
            yield tagger.write({"path": str(photo), "status": "error", "error": str(e)})
            continue
        yield tagger.record(photo, data, answer)
