"""What the tagger writes into and next to photos: XMP sidecars (and reading our own back) and
JPEG copies with GPS in their EXIF (only the EXIF segment changes: the compressed image data is
copied byte for byte)."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr, unescape

from PIL import Image

from landmark.runtime import images

MODEL_ATTRIBUTE = "landmark:Model"
LABEL_ATTRIBUTE = "landmark:Label"
PROBABILITY_ATTRIBUTE = "landmark:Probability"
SOURCE_ATTRIBUTE = "landmark:Source"  # exif, landmark, gpx or time-neighbour
# Evidence behind a place that is not the photo's own landmark (README, Trips).
EVIDENCE_ATTRIBUTES = {
    "anchor": "landmark:Anchor",  # the photo a time neighbour took its place from
    "gap_s": "landmark:TimeGap",  # seconds from the anchor to this photo
    "gpx_file": "landmark:GPXFile",
    "gpx_gap_s": "landmark:GPXGap",  # seconds between the two track points interpolated
    "trip": "landmark:Trip",
    "reviewed": "landmark:Reviewed",  # "accepted": a person confirmed the place
}
NAMESPACE = "https://github.com/landmark-mlops/landmark/ns/1.0/"
MAX_SIDECAR_BYTES = 1_000_000  # a larger .xmp is not one of ours


def sidecar_path(photo: Path) -> Path:
    """`photo.jpg` -> `photo.jpg.xmp`, the name digiKam and darktable look for."""
    return photo.with_name(photo.name + ".xmp")


def tagged_by(sidecar: Path) -> str | None:
    """The model recorded in one of our sidecars; "" for someone else's sidecar (or anything
    else of that name); None if there is none."""
    attributes = read_sidecar(sidecar)
    return None if attributes is None else attributes.get(MODEL_ATTRIBUTE, "")


def read_sidecar(sidecar: Path) -> dict[str, str] | None:
    """The `landmark:` attributes of one of our sidecars, read once; {} for a file that is not
    ours; None if there is no such file."""
    try:
        os.lstat(sidecar)
    except OSError:  # none there (or a name too long to exist: writing it will say so)
        return None
    try:
        text = images.read_photo(sidecar, MAX_SIDECAR_BYTES).decode(errors="replace")
    except images.BadImageError:  # a folder, a FIFO, huge, no permission: not ours to touch
        return {}
    if f'{MODEL_ATTRIBUTE}="' not in text:
        return {}
    found = re.findall(r'(landmark:\w+)="([^"]*)"', text)
    return {name: unescape(value, {"&quot;": '"'}) for name, value in found}


def xmp_sidecar(answer: dict[str, Any], model_id: str) -> str:
    """XMP with the place's coordinates as the photo's GPS and its country; a recognised
    landmark (`answer["label"]`) also as keywords. A place from other evidence (a GPX track, a
    time neighbour) says so in `landmark:Source` and claims no landmark keyword."""
    location = answer["location"] or {}
    name, country = answer["name"], location.get("country") or ""
    recognised = bool(answer.get("label"))
    keywords = ([name] + ([country] if country else [])) if recognised else []
    hierarchy = ["Places", country, name] if country else ["Places", name]
    attributes = {MODEL_ATTRIBUTE: model_id, SOURCE_ATTRIBUTE: answer.get("source", "landmark")}
    if recognised:
        attributes[LABEL_ATTRIBUTE] = answer["label"]
        attributes[PROBABILITY_ATTRIBUTE] = f"{answer['probability']:.4f}"
    else:
        attributes["landmark:Place"] = name
        attributes["landmark:Confidence"] = f"{answer['probability']:.4f}"
    for key, attribute in EVIDENCE_ATTRIBUTES.items():
        if answer.get(key) is not None:
            attributes[attribute] = str(answer[key])
    if location:
        attributes["exif:GPSLatitude"] = _xmp_coordinate(location["latitude"], "NS")
        attributes["exif:GPSLongitude"] = _xmp_coordinate(location["longitude"], "EW")
        attributes["exif:GPSVersionID"] = "2.3.0.0"
    if country:
        attributes["photoshop:Country"] = country
    attrs = "\n".join(f"    {k}={quoteattr(v)}" for k, v in attributes.items())
    items = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in keywords)
    subjects = (
        f"   <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>\n"
        "   <lr:hierarchicalSubject><rdf:Bag>"
        f"<rdf:li>{escape('|'.join(hierarchy))}</rdf:li></rdf:Bag></lr:hierarchicalSubject>\n"
        if recognised
        else ""
    )
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="landmark">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:landmark="{NAMESPACE}"
{attrs}>
{subjects}  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def _xmp_coordinate(value: float, hemispheres: str) -> str:
    """XMP's GPS form "DDD,MM.mmmmmK" (degrees, decimal minutes, hemisphere)."""
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees},{minutes:.5f}{hemisphere}"


def jpeg_with_gps(jpeg: bytes, latitude: float, longitude: float) -> bytes:
    """The same JPEG with GPS tags in its EXIF: only the EXIF segment changes; the other
    segments and the compressed image data are copied byte for byte (no re-encoding)."""

    def add_gps(exif: Image.Exif) -> None:
        gps = exif.get_ifd(images.GPS_IFD)
        gps.clear()
        gps.update(gps_tags(latitude, longitude))

    try:
        return jpeg_with_exif(jpeg, add_gps)
    except ValueError as e:
        raise ValueError(f"{e}: no GPS copy") from e


def gps_tags(latitude: float, longitude: float) -> dict[int, Any]:
    """EXIF GPS IFD tags for a position (version 2.3, degrees/minutes/seconds)."""
    return {
        0: b"\x02\x03\x00\x00",  # GPSVersionID 2.3
        1: "N" if latitude >= 0 else "S",
        2: _dms(latitude),
        3: "E" if longitude >= 0 else "W",
        4: _dms(longitude),
    }


def jpeg_with_exif(jpeg: bytes, edit: Callable[[Image.Exif], None]) -> bytes:
    """The same JPEG with its EXIF changed by `edit` (in place): only the EXIF segment changes;
    the other segments and the compressed image data are copied byte for byte.

    Raises:
        ValueError: not a JPEG, EXIF that cannot be read or written back, or too large.
    """
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    try:  # junk after b"Exif\0\0", or values PIL reads but cannot write back
        exif = Image.open(io.BytesIO(jpeg)).getexif()
        edit(exif)
        segments, data_start = _jpeg_segments(jpeg)
        kept = [s for s in segments if not (s[1] == 0xE1 and s[0][4:10] == b"Exif\x00\x00")]
        payload = exif.tobytes()  # b"Exif\0\0" + TIFF structure
    except Exception as e:
        raise ValueError(f"its EXIF cannot be read or written back ({e})") from e
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(
            f"its EXIF would be {len(payload):,} bytes, over the 65,533 bytes a JPEG segment holds"
        )
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    head = 1 if kept and kept[0][1] == 0xE0 else 0  # after JFIF's APP0, where readers expect it
    before, after = [s[0] for s in kept[:head]], [s[0] for s in kept[head:]]
    return b"\xff\xd8" + b"".join(before) + app1 + b"".join(after) + jpeg[data_start:]


def _jpeg_segments(jpeg: bytes) -> tuple[list[tuple[bytes, int]], int]:
    """The marker segments between SOI and the first scan, and where the scan starts."""
    pos, segments = 2, []
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        if marker == 0xDA:  # start of scan: compressed data follows
            break
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        segments.append((jpeg[pos : pos + 2 + length], marker))
        pos += 2 + length
    return segments, pos


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
    return float(degrees), float(minutes), seconds
