"""What the tagger writes into and next to photos: XMP sidecars (and reading our own back) and
JPEG copies with GPS in their EXIF (only the EXIF segment changes: the compressed image data is
copied byte for byte)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr, unescape

from PIL import Image

from landmark.runtime import images

MODEL_ATTRIBUTE = "landmark:Model"
LABEL_ATTRIBUTE = "landmark:Label"
PROBABILITY_ATTRIBUTE = "landmark:Probability"
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
    """XMP with the landmark as keywords, its country and its coordinates as the photo's GPS."""
    location = answer["location"] or {}
    name, country = answer["name"], location.get("country", "")
    keywords = [name] + ([country] if country else [])
    hierarchy = "|".join(["Places", country, name] if country else ["Places", name])
    attributes = {
        LABEL_ATTRIBUTE: answer["label"],
        PROBABILITY_ATTRIBUTE: f"{answer['probability']:.4f}",
        MODEL_ATTRIBUTE: model_id,
    }
    if location:
        attributes["exif:GPSLatitude"] = _xmp_coordinate(location["latitude"], "NS")
        attributes["exif:GPSLongitude"] = _xmp_coordinate(location["longitude"], "EW")
        attributes["exif:GPSVersionID"] = "2.3.0.0"
    if country:
        attributes["photoshop:Country"] = country
    attrs = "\n".join(f"    {k}={quoteattr(v)}" for k, v in attributes.items())
    items = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in keywords)
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
   <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>{escape(hierarchy)}</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
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
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    try:  # junk after b"Exif\0\0", or values PIL reads but cannot write back
        exif = Image.open(io.BytesIO(jpeg)).getexif()
        gps = exif.get_ifd(images.GPS_IFD)
        gps.clear()
        gps.update(
            {
                0: b"\x02\x03\x00\x00",  # GPSVersionID 2.3
                1: "N" if latitude >= 0 else "S",
                2: _dms(latitude),
                3: "E" if longitude >= 0 else "W",
                4: _dms(longitude),
            }
        )
        segments, data_start = _jpeg_segments(jpeg)
        kept = [s for s in segments if not (s[1] == 0xE1 and s[0][4:10] == b"Exif\x00\x00")]
        payload = exif.tobytes()  # b"Exif\0\0" + TIFF structure
    except Exception as e:
        raise ValueError(f"its EXIF cannot be read or written back ({e}): no GPS copy") from e
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(
            f"its EXIF with GPS would be {len(payload):,} bytes, over the 65,533 bytes a JPEG "
            "segment holds: no GPS copy"
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
