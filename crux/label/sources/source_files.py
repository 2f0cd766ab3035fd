"""Reading a source folder (local or any fsspec URL), shared by the format scanners: listing and decoding its images,
`classes.txt`, `verdicts.json`, class names through the project's aliases, and numbers that must be finite."""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from crux.kinds import Label, SegmentKind, get_kind
from crux.label.sources.source_items import ImportValidationError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from crux.config import ProjectSpec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Magnetic Tile keeps a pixel mask NAME.png beside each NAME.jpg; a PNG twin of a photo is a mask.
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".bmp"})
COORD_TOLERANCE = 1e-6
VERDICTS = "verdicts.json"  # segment exports: {image file name: class} beside images/


def open_fs(source: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(source)
        found = fs.exists(root) and fs.isdir(root)
    except Exception as exc:  # fsspec backends raise their own types (botocore, aiohttp, ValueError for a protocol)
        raise ImportValidationError([f"{source}: cannot open the source ({type(exc).__name__}: {exc})"]) from exc
    if not found:
        raise ImportValidationError([f"{source}: source folder does not exist"])
    return fs, root.rstrip("/")


def _read_text(fs: Any, path: str, problems: list[str]) -> str | None:
    """A UTF-8 text file of the source (classes.txt), or None after naming the problem."""
    try:
        return str(fs.cat_file(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc})")
        return None


def class_names(fs: Any, path: str, problems: list[str]) -> list[str] | None:
    """classes.txt: one class a line (blank lines skipped); a name given twice is a problem (ids would be ambiguous)."""
    text = _read_text(fs, path, problems)
    if text is None:
        return None
    names = [c.strip() for c in text.splitlines() if c.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"{path}: class(es) {', '.join(repeated)} listed more than once")
    return names


def _protocol(fs: Any) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "file" if protocol in ("file", "local") else protocol


def source_url(fs: Any, path: str) -> str:
    protocol = _protocol(fs)
    return path if protocol == "file" else f"{protocol}://{path}"


def _decode(fs: Any, path: str) -> tuple[str, int, int]:
    from crux.postprocess import open_image

    data = fs.cat_file(path)
    with open_image(io.BytesIO(data), name=path) as image:
        image.load()  # a full decode: truncated or corrupt files fail here, not at training time
        width, height = image.size
    return hashlib.sha256(data).hexdigest(), width, height


def list_images(fs: Any, root: str, problems: list[str]) -> list[str]:
    files = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith("."))
    by_stem: dict[str, set[str]] = {}
    for path in files:
        stem, ext = posixpath.splitext(path)
        by_stem.setdefault(stem, set()).add(ext.lower())
    images = []
    for path in files:
        stem, ext = posixpath.splitext(path)
        ext = ext.lower()
        if ext == ".png" and by_stem[stem] & PHOTO_EXTENSIONS:
            continue  # a mask beside its photo
        if ext not in IMAGE_EXTENSIONS:
            problems.append(f"{path}: not an image file (extension {ext or 'none'})")
            continue
        images.append(path)
    return images


def decode_all(
    fs: Any, paths: Sequence[str], problems: list[str], progress: Callable[[int], None] | None
) -> dict[str, tuple[str, int, int]]:
    decoded: dict[str, tuple[str, int, int]] = {}

    def work(path: str) -> tuple[str, tuple[str, int, int] | Exception]:
        try:
            return path, _decode(fs, path)
        except Exception as exc:  # Pillow raises many types for bad files
            return path, exc

    with ThreadPoolExecutor(max_workers=4) as pool:
        for path, outcome in pool.map(work, paths):
            if isinstance(outcome, Exception):
                problems.append(f"{path}: not a readable image ({type(outcome).__name__}: {outcome})")
            else:
                decoded[path] = outcome
            if progress:
                progress(1)
    return decoded


def finite(value: Any) -> float:
    """float(value), refusing NaN and ±inf (every range check would let NaN through: NaN < 0 is False)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def class_name(value: Any) -> str:
    """A class name in a JSON record: a non-empty string (a list or number would pass `in classes` checks oddly and
    break set operations later)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"label {value!r} is not a class name")
    return value


def class_for(name: str, spec: ProjectSpec) -> str | None:
    if name in spec.aliases:
        return spec.aliases[name]
    return name if name in spec.classes else None


def verdict_label(verdict: str | None, spec: ProjectSpec) -> tuple[Label, ...]:
    """The whole-image verdict as a label, where the project has the Choices for it (an ok_class)."""
    return (Label(cls=verdict),) if verdict is not None and spec.ok_class is not None else ()


def read_verdicts(fs: Any, folder: str, spec: ProjectSpec, problems: list[str]) -> dict[str, str]:
    """`verdicts.json` ({image file name: class}) that `crux export-dataset` writes beside segment exports."""
    path = f"{folder}/{VERDICTS}"
    if not fs.exists(path):
        return {}
    try:
        data = json.loads(fs.cat_file(path))
        if not isinstance(data, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}: not a JSON object of image name → class ({exc})")
        return {}
    out = {}
    for name, cls in data.items():
        mapped = class_for(str(cls), spec)
        if mapped is None:
            problems.append(f"{path}: {name}: class {cls!r} is not a class of project {spec.title!r}")
        else:
            out[str(name)] = mapped
    return out


def constant_labels(labels: tuple[Label, ...] | None, width: int, height: int) -> tuple[Label, ...] | None:
    return labels


def mask_regions(spec: ProjectSpec, class_mask: NDArray[Any], classes: Sequence[str]) -> list[Label]:
    """A class mask (0 background, v = 1 + index in `classes`) as the regions of a segment project's kind; only
    projects of mask geometry read masks, and the segment kind is the one kind with that geometry."""
    kind = get_kind(spec.kind)
    if not isinstance(kind, SegmentKind):
        raise TypeError(f"project {spec.title!r} is {spec.kind!r}: its labels have no pixel masks")
    return kind.regions_from_mask(class_mask, classes)
