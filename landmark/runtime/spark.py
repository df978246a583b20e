"""The tagger's Spark engine: photos scored by `mlflow.pyfunc.spark_udf` on a Spark cluster.

`SparkScorer` is a `tagging.Scorer`: the tagger's one loop triages and records on the driver;
Spark only scores. Local mode (`local[2]`) by default; needs Java 17.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from landmark import tracking
from landmark.runtime.contract import ModelMetadata

# The pyfunc's answers as a Spark struct (errors="report": bad photos carry `error`).
# MLflow cannot convert a missing (None) nested struct, so `location` is looked up afterwards.
SPARK_RESULT = (
    "struct<label: string, name: string, probability: double, known: boolean, novelty: double,"
    " error: string,"
    " top_k: array<struct<label: string, name: string, probability: double>>>"
)


class SparkScorer:
    """Scores all pending photos in one Spark job, then answers them in the given order."""

    def __init__(self, model_uri: str, metadata: ModelMetadata, master: str) -> None:
        self.model_uri, self.metadata, self.master = model_uri, metadata, master

    def score(
        self, photos: Iterable[tuple[Path, bytes]], top_k: int, threshold: float | None
    ) -> Iterator[tuple[Path, bytes | None, dict[str, Any]]]:
        pending = [photo for photo, _ in photos]  # Spark reads the files itself: drop the bytes
        if not pending:
            return
        answers = spark_answers(
            [str(p.resolve()) for p in pending], self.model_uri, top_k, threshold, self.master
        )
        for photo in pending:
            answer = answers.get(str(photo.resolve()))
            if answer is None:
                answer = {"error": "not scored by Spark (vanished during the run?)"}
            location = self.metadata.location(answer.get("label"))
            answer["location"] = dataclasses.asdict(location) if location else None
            yield photo, None, answer


def spark_answers(
    source: list[str], model_uri: str, top_k: int, threshold: float | None, master: str
) -> dict[str, dict[str, Any]]:
    """Score photo files (read as Spark's `binaryFile`) with `mlflow.pyfunc.spark_udf` on
    Spark; {path: answer}."""
    from pyspark.sql import SparkSession
    from pyspark.sql.types import _parse_datatype_string

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need our packages too
    spark = SparkSession.builder.master(master).appName("landmark-tag").getOrCreate()
    try:
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
