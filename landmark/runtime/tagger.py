"""What the tagger writes for each photo: its report line, and for a placed photo the
organized link (or copy), the JPEG copy with GPS and the XMP sidecar (the sidecar last: the
photo is done). `Tagger.triage` decides what a photo needs; `Tagger.place_rest` places the
photos that waited for their trip (`runtime.trips`); `Tagger.apply_row` writes a reviewed
plan row. Every file is published under a temporary name and renamed (`runtime.files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from landmark.config import TagConfig
from landmark.runtime import camera, files, gpx, images, trips
from landmark.runtime.contract import ModelMetadata
from landmark.runtime.sidecars import (
    LABEL_ATTRIBUTE,
    MODEL_ATTRIBUTE,
    PROBABILITY_ATTRIBUTE,
    jpeg_with_gps,
    read_sidecar,
    sidecar_path,
    tagged_by,
    xmp_sidecar,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Triage:
    """What a photo needs: a report `row` (nothing to do), or scoring of its `data`, or, with
    `answer` (from our own sidecar), only the outputs a former run did not finish."""

    row: dict[str, Any] | None = None
    data: bytes | None = None
    answer: dict[str, Any] | None = None


class Tagger:
    """Writes the outcome for each photo: organized link, GPS copy, sidecar, report line.

    A photo with a camera time waits for `place_rest`: its trip may give it a place (a GPX
    track, a time neighbour) or take one away (a landmark too far from the trip's other anchors
    to be right). A confident landmark without a camera time is written as soon as it is known.
    With `cfg.plan` nothing but the report is written, and placed rows say `planned`.
    """

    def __init__(
        self,
        cfg: TagConfig,
        model_id: str,
        metadata: ModelMetadata | None,
        tracks: list[gpx.Segment] = (),
    ) -> None:
        self.cfg, self.model_id, self.metadata, self.tracks = cfg, model_id, metadata, tracks
        self.observations: dict[Path, trips.Observation] = {}
        self.identities: dict[Path, dict[str, Any]] = {}
        self.waiting: list[tuple[Path, dict[str, Any]]] = []
        self.organize = Path(cfg.organize) if cfg.organize else None
        self.gps_copies = Path(cfg.gps_copies) if cfg.gps_copies else None
        self.counts: dict[str, int] = {}
        report = Path(cfg.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        files.end_last_line(report)
        self.report = report.open("a", encoding="utf-8")

    def close(self) -> None:
        self.report.close()

    def outputs(self) -> list[Path]:
        """The folders this run writes into besides the photos' own (never searched for photos)."""
        return [p for p in (self.organize, self.gps_copies) if p is not None]

    def triage(self, photo: Path) -> Triage:
        """What `photo` needs, from its sidecar, its bytes and its EXIF GPS."""
        row = {"path": str(photo), "model": self.model_id}
        sidecar = sidecar_path(photo)
        attributes = read_sidecar(sidecar)
        if attributes == {}:
            reason = f"{sidecar.name} exists and was not written by landmark: left alone"
            return Triage({**row, "status": "error", "error": reason})
        problem = _unwritable(sidecar)
        if problem:  # known before any output is written, so none is left without its sidecar
            return Triage({**row, "status": "error", "error": f"cannot write: {problem}"})
        ours = attributes is not None and attributes.get(MODEL_ATTRIBUTE) == self.model_id
        answer = self._answer_from(attributes) if ours else None
        if ours and answer is None:  # placed by a track or by time: its own evidence may anchor
            self._observe(photo, _bytes_or_nothing(photo))
            return Triage({**row, "status": "skipped", "sidecar": str(sidecar)})
        try:  # a tagged photo is read for its trip: its time, its GPS, and what a plan checks
            data = images.read_photo(photo)
        except images.BadImageError as e:  # vanished, no permission, a FIFO, too large, ...
            return Triage({**row, "status": "error", "error": str(e)})
        if answer is not None:  # tagged by an earlier run: still an anchor for its trip
            self.identities[photo] = files.identity(photo, data)
            self._observe(photo, data, answer)
            if not self._missing(photo, data, answer):
                return Triage({**row, "status": "skipped", "sidecar": str(sidecar)})
            return Triage(data=data, answer=answer)
        self.identities[photo] = files.identity(photo, data)
        gps = self._observe(photo, data).gps  # its own GPS stays its evidence when overwritten
        if gps and not self.cfg.overwrite_gps:
            return Triage({**row, "status": "has_gps", "source": "exif", "photo_gps": list(gps)})
        return Triage(data=data)

    def _observe(self, photo: Path, data: bytes, answer: dict[str, Any] | None = None):
        """Remember what placing trips needs of `photo` (its camera, times, own evidence), read
        from its EXIF once; its facts."""
        facts = camera.read_facts(data)
        self.observations[photo] = trips.Observation(str(photo), facts, facts.gps)
        if answer is not None:
            self._recognised(photo, answer)
        return facts

    def _recognised(self, photo: Path, answer: dict[str, Any]) -> None:
        """A confident landmark makes `photo` an anchor of its trip (if it has a location)."""
        location = answer.get("location")
        if photo in self.observations and answer.get("known") and location:
            place = trips.Place(answer["name"], location["latitude"], location["longitude"],
                                location.get("country"), float(answer["probability"]))  # fmt: skip
            self.observations[photo] = dataclasses.replace(self.observations[photo], landmark=place)

    def _answer_from(self, attributes: dict[str, str]) -> dict[str, Any] | None:
        """The answer our sidecar records (label, from which the rest follows)."""
        label = attributes.get(LABEL_ATTRIBUTE)
        if label not in self.metadata.class_folders:
            return None
        try:
            probability = float(attributes.get(PROBABILITY_ATTRIBUTE, ""))
        except ValueError:  # edited by hand: the label is what matters
            probability = 0.0
        location = self.metadata.location(label)
        name = self.metadata.class_names[self.metadata.class_folders.index(label)]
        return {
            "label": label, "name": name, "probability": probability, "known": True,
            "location": dataclasses.asdict(location) if location else None, "top_k": [],
        }  # fmt: skip

    def _missing(self, photo: Path, data: bytes | None, answer: dict[str, Any]) -> list[str]:
        """The requested outputs of a tagged photo that are not there (yet); its GPS copy is
        checked when its `data` is given (`triage` reads it when a copy is wanted)."""
        missing = []
        if self.organize and self._organized(photo, answer) is None:
            missing.append("organize")
        if data is not None and self._gps_copy_wanted(data, answer):
            try:
                done = self._gps_copy(photo, data, answer, write=False) is not None
            except ValueError:  # no copy possible: its report line said why
                done = True
            if not done:
                missing.append("gps_copies")
        return missing

    def record(self, photo: Path, data: bytes | None, answer: dict[str, Any]) -> dict[str, Any]:
        """Act on one prediction and write its report line. `data` (the photo's bytes) is read
        again only when a GPS copy needs it and the scorer did not keep it."""
        if answer.get("error"):
            row = {"path": str(photo), "model": self.model_id}
            return self.write({**row, "status": "error", "error": answer["error"]})
        row = self._answer_row(photo, answer)
        if answer["known"]:
            self._recognised(photo, answer)
        observed = self.observations.get(photo)
        in_a_trip = observed is not None and observed.facts.local is not None
        trips_matter = self.cfg.time_window > 0 or bool(self.tracks)
        if not answer["known"] or self.cfg.plan or (in_a_trip and trips_matter):
            self.waiting.append((photo, answer))  # its trip decides: `place_rest`
            return row
        return self._write_outputs(photo, data, answer, {**row, "source": "landmark"})

    def _answer_row(self, photo: Path, answer: dict[str, Any]) -> dict[str, Any]:
        location = answer.get("location") or {}
        return {
            "path": str(photo),
            "model": self.model_id,
            "label": answer["label"],
            "name": answer["name"],
            "probability": round(float(answer["probability"]), 6),
            "top_k": [[t["name"], round(float(t["probability"]), 6)] for t in answer["top_k"]],
            "country": location.get("country"),
            "latitude": location.get("latitude"),
            "longitude": location.get("longitude"),
        }

    def _write_outputs(self, photo, data, answer, row: dict[str, Any]) -> dict[str, Any]:
        """Links, GPS copy and sidecar of a placed photo, then its report line."""
        try:
            if self.organize:
                row["organized"] = str(self._organize(photo, answer))
            if self.gps_copies and answer.get("location") and data is None:
                data = images.read_photo(photo)
            if self._gps_copy_wanted(data, answer):
                try:
                    row["gps_copy"] = str(self._gps_copy(photo, data, answer))
                except ValueError as e:  # no room for GPS in its EXIF: the rest is still done
                    row["gps_copy_error"] = str(e)
            row["sidecar"] = str(self._write_sidecar(photo, answer))  # last: the photo is done
        except (OSError, images.BadImageError) as e:
            return self.write({**row, "status": "error", "error": f"cannot write: {e}"})
        return self.write({**row, "status": "tagged"})

    def place_rest(self) -> None:
        """Place the photos that waited (GPX, time neighbours, with their trips) and write them."""
        if not self.waiting:
            return
        photos = list(self.observations.values())
        try:
            placements = trips.place_all(photos, self.tracks, self.cfg, self.landmarks())
            fallback = trips.Placement()
        except Exception as e:  # a bug must not cost the report lines of every waiting photo
            log.exception("placing the trips failed: every waiting photo gets only its own")
            placements, fallback = {}, trips.Placement(reason=f"placing failed: {e}")
        for photo, answer in self.waiting:
            with one_line_at_most(self, photo):
                self._record_placed(photo, answer, placements.get(str(photo), fallback))
        self.waiting = []

    def landmarks(self) -> list[trips.Place]:
        """The model's landmarks as places (they name positions from GPS and tracks)."""
        meta = self.metadata
        if meta is None:
            return []
        names = dict(zip(meta.class_folders, meta.class_names, strict=True))
        return [
            trips.Place(names[label], loc.latitude, loc.longitude, loc.country)
            for label, loc in meta.locations.items()
            if label in names
        ]

    def _record_placed(self, photo: Path, answer: dict[str, Any], placed: trips.Placement):
        """The report line (and, unless planning, the outputs) of a photo that waited."""
        row = {**self._answer_row(photo, answer), **self._trip_fields(photo, placed)}
        if placed.demoted:
            row["demoted"] = placed.demoted
        if answer["known"] and not placed.demoted:
            row = {**row, "source": "landmark", "confidence": row["probability"]}
            if self.cfg.plan:
                return self.write({**row, "status": "planned"})
            return self._write_outputs(photo, None, answer, row)
        if placed.source not in {"gpx", "time-neighbour"}:
            candidates = [_candidate(c) for c in placed.candidates]
            return self.write({**row, "status": "unsure", "reason": placed.reason,
                               "candidates": candidates})  # fmt: skip
        found = placed.place
        location = {"latitude": found.latitude, "longitude": found.longitude,
                    "country": found.country}  # fmt: skip
        evidence = {
            "source": placed.source, "anchor": placed.anchor and Path(placed.anchor).name,
            "gap_s": placed.gap_s, "gpx_file": placed.gpx_file, "gpx_gap_s": placed.gpx_gap_s,
            "trip": placed.trip,
        }  # fmt: skip
        row.update(
            guess={k: row.pop(k) for k in ("label", "name", "probability")},
            label=None, name=found.name, confidence=found.confidence, **location, **evidence,
        )  # fmt: skip
        row["anchor"] = placed.anchor  # the whole path in the report, its name in the sidecar
        if self.cfg.plan:
            return self.write({**row, "status": "planned"})
        placed_answer = {"label": None, "name": found.name, "probability": found.confidence,
                         "known": True, "location": location, "top_k": [], **evidence}  # fmt: skip
        return self._write_outputs(photo, None, placed_answer, row)

    def apply_row(self, row: dict[str, Any], pick: int | None) -> dict[str, Any]:
        """Write a reviewed plan row (`pick`: the candidate chosen for an unsure photo)."""
        photo = Path(row["path"])
        out = {"path": row["path"], "model": row.get("model")}
        problem, data = files.changed_since(row)
        if problem:
            return self.write({**out, "status": "changed", "error": f"{photo}: {problem}"})
        sidecar = sidecar_path(photo)
        if read_sidecar(sidecar) == {}:
            reason = f"{sidecar.name} exists and was not written by landmark: left alone"
            return self.write({**out, "status": "error", "error": reason})
        fields = {k: row.get(k) for k in ("source", "anchor", "gap_s", "gpx_file", "gpx_gap_s")}
        if row["status"] == "unsure":
            chosen = row["candidates"][pick]
            fields.update(source="time-neighbour", anchor=chosen["anchor"], gap_s=chosen["gap_s"])
            row = {**row, "name": chosen["place"], "confidence": chosen["confidence"],
                   **{k: chosen[k] for k in ("latitude", "longitude", "country")}}  # fmt: skip
        recognised = fields["source"] == "landmark"
        location = {k: row.get(k) for k in ("latitude", "longitude", "country")}
        answer = {
            "label": row.get("label") if recognised else None, "name": row["name"],
            "probability": float(row.get("probability" if recognised else "confidence") or 0),
            "known": True, "location": location if location["latitude"] is not None else None,
            "top_k": [], **fields, "trip": row.get("trip"), "reviewed": "accepted",
        }  # fmt: skip
        if answer["anchor"]:
            answer["anchor"] = Path(answer["anchor"]).name
        out.update({k: v for k, v in answer.items() if k not in {"known", "top_k", "location"}})
        return self._write_outputs(photo, data, answer, {**out, **location})

    def _trip_fields(self, photo: Path, placed: trips.Placement) -> dict[str, Any]:
        facts = self.observations[photo].facts if photo in self.observations else None
        return {
            "camera": facts.camera if facts else None,
            "time": facts.local.isoformat(sep=" ") if facts and facts.local else None,
            "utc": placed.utc.isoformat(sep=" ") if placed.utc else None,
            "clock": placed.clock or None, "trip": placed.trip,
            "time_problem": facts.time_problem if facts and facts.time_problem else None,
            **self.identities.get(photo, {}),
        }  # fmt: skip

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        self.report.write(files.json_line(row))
        self.report.flush()  # an interrupted run keeps every line written so far
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        return row

    def _write_sidecar(self, photo: Path, answer: dict[str, Any]) -> Path:
        sidecar = sidecar_path(photo)
        content = xmp_sidecar(answer, self.model_id).encode()
        try:  # replace only a sidecar of ours: one another program wrote since triage is kept
            files.publish(content, sidecar, replace=lambda path: bool(tagged_by(path)))
        except FileExistsError as e:
            raise OSError(f"{sidecar.name} appeared during the run, not written by landmark: "
                          "left alone") from e  # fmt: skip
        return sidecar

    def _organize(self, photo: Path, answer: dict[str, Any]) -> Path:
        done = self._organized(photo, answer)
        if done is not None:
            return done  # an earlier run organized it
        for target in self._organize_targets(photo, answer):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.cfg.copy:
                    files.publish_copy(photo, target)
                else:
                    target.symlink_to(photo.resolve())  # atomic, and never replaces a file
                return target
            except FileExistsError:
                continue  # another photo of that name got there first
        raise OSError(f"no free name for {photo.name} in {target.parent}")

    def _organized(self, photo: Path, answer: dict[str, Any]) -> Path | None:
        """Where an earlier run organized `photo`, if it did."""
        for target in self._organize_targets(photo, answer):
            if self.cfg.copy and files.same_content(target, photo):
                return target
            if not self.cfg.copy and target.is_symlink() and files.links_to(target, photo):
                return target
        return None

    def _organize_targets(self, photo: Path, answer: dict[str, Any]) -> list[Path]:
        country = (answer.get("location") or {}).get("country") or "Unknown country"
        folder = self.organize / files.safe_name(country) / files.safe_name(answer["name"])
        return files.names_for(folder, photo)

    def _gps_copy_wanted(self, data: bytes | None, answer: dict[str, Any]) -> bool:
        wanted = self.gps_copies is not None and bool(answer.get("location"))
        return wanted and (data is None or data[:2] == b"\xff\xd8")

    def _gps_copy(
        self, photo: Path, data: bytes, answer: dict[str, Any], write: bool = True
    ) -> Path | None:
        """Where `photo`'s GPS copy is: written by an earlier run, else (`write`) now."""
        content = self._gps_content(data, answer)
        for target in files.names_for(self.gps_copies, photo):
            if files.has_content(target, content):
                return target
            if not write:
                continue
            try:
                files.publish(content, target, replace=lambda path: False)
                return target
            except FileExistsError:
                continue  # another photo of that name got there first
        if write:
            raise OSError(f"no free name for {photo.name} in {self.gps_copies}")
        return None

    @staticmethod
    def _gps_content(data: bytes, answer: dict[str, Any]) -> bytes:
        location = answer["location"]
        return jpeg_with_gps(data, location["latitude"], location["longitude"])


def _candidate(candidate: trips.Candidate) -> dict[str, Any]:
    place = candidate.place
    return {
        "place": place.name, "latitude": place.latitude, "longitude": place.longitude,
        "country": place.country, "anchor": candidate.anchor, "gap_s": candidate.gap_s,
        "confidence": place.confidence,
    }  # fmt: skip


def _bytes_or_nothing(photo: Path) -> bytes:
    try:
        return images.read_photo(photo)
    except images.BadImageError:
        return b""


def _unwritable(sidecar: Path) -> str:
    """Why the sidecar cannot be written ("" if it can, as far as can be known beforehand)."""
    if len(os.fsencode(sidecar.name)) > files.MAX_NAME_BYTES:
        return f"the sidecar's name would be too long (over {files.MAX_NAME_BYTES} bytes)"
    if not os.access(sidecar.parent, os.W_OK):
        return f"{sidecar.parent} is not writable (read-only folder?)"
    return ""


@contextlib.contextmanager
def one_line_at_most(tagger: Tagger, photo: Path) -> Iterator[None]:
    """A photo whose handling fails unexpectedly costs one report line, not the run."""
    try:
        yield
    except Exception as e:
        log.exception("%s", photo)
        row = {"path": str(photo), "model": tagger.model_id, "status": "error"}
        tagger.write({**row, "error": f"unexpected {type(e).__name__}: {e}"})
