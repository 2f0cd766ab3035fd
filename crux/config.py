"""Frozen, validated configuration objects built from plain mappings (params.yaml sections).

Only `crux/settings.py` reads params.yaml; everything else receives these objects. Unknown keys are
rejected with the dotted path of the offending key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from crux.errors import CruxError

T = TypeVar("T")

HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}\Z")
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# Label Studio label values end up in XML attributes and in file names of exports.
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,62}\Z")


class ConfigError(CruxError, ValueError):
    """A configuration value is missing, unknown or impossible; the message names the key."""


def unknown_name(what: str, name: str, known: Sequence[str]) -> ConfigError:
    """The error for a name that matches nothing declared: the closest declared name, or the list of them."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known)) or 'none'}"
    return ConfigError(f"{what} {name!r} is not declared in labelstudio.projects ({hint})")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses; reject unknown keys."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: required key is missing")
            continue
        values[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, where)
        return value
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item_hint = args[0] if args else Any
        return tuple(_coerce(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        value_hint = args[1] if len(args) == 2 else Any
        return types.MappingProxyType({str(k): _coerce(value_hint, v, f"{where}.{k}") for k, v in value.items()})
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # Every range check passes NaN (NaN < 0 is False) and JSON has no NaN: refuse it here, the one place.
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    return value


# --------------------------------------------------------------------------------------------------
# Label Studio section


@dataclass(frozen=True)
class OverlapSpec:
    """How many people label each task: Label Studio Community's own per-project overlap settings
    (`maximum_annotations`, `overlap_cohort_percentage`), so its task queue does the assignment."""

    # Annotators per overlapped task; 1 = every task is labelled once (Label Studio's default).
    annotators: int = 1
    # Share of the tasks that get `annotators` labels (the rest get one): 1.0 = all, 0.1 = a 10% audit sample.
    share: float = 1.0

    def __post_init__(self) -> None:
        if self.annotators < 1:
            raise ConfigError(f"overlap.annotators: {self.annotators} must be >= 1")
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"overlap.share: {self.share} is not in 0..1")


@dataclass(frozen=True)
class AgreementSpec:
    """When two people's labels of one image count as the same, and which images go back for review."""

    # Detection: boxes of the same class match at IoU >= this (greedy, best first).
    match_iou: float = 0.5
    # An image whose worst annotator pair agrees less than this is conflicted: kept in the snapshot, marked, and
    # left out of train/val/test by the `data` stage until resolved. None = the kind's default (1.0 for classify
    # and detect: any disagreement; 0.7 mask IoU for segment, where two painters never hit identical pixels).
    min_item: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.match_iou <= 1.0:
            raise ConfigError(f"agreement.match_iou: {self.match_iou} is not in (0, 1]")
        if self.min_item is not None and not 0.0 <= self.min_item <= 1.0:
            raise ConfigError(f"agreement.min_item: {self.min_item} is not in 0..1")


@dataclass(frozen=True)
class ProjectSpec:
    """One inspection project: a Label Studio project, a dataset and a model of its own."""

    title: str
    kind: str
    classes: Mapping[str, str]
    instructions: str = ""
    # Source folder names that stand for a class, e.g. Magnetic Tile's `MT_Free` means OK.
    aliases: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    # The defect-free class of a classification project (inspection view: OK vs NG).
    ok_class: str | None = None
    # Several annotators per task and the agreement that makes their labels usable (see OverlapSpec).
    overlap: OverlapSpec = field(default_factory=OverlapSpec)
    agreement: AgreementSpec = field(default_factory=AgreementSpec)

    def __post_init__(self) -> None:
        from crux.kinds import KINDS

        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not a task kind; known: {', '.join(sorted(KINDS))}")
        if not 1 <= len(self.title.strip()) <= 50:
            # Label Studio refuses longer titles (a 400 from the API, after half the projects were synced).
            raise ConfigError(f"title: {self.title!r} must be 1 to 50 characters (Label Studio's limit)")
        if not self.classes:
            raise ConfigError("classes: at least one class is required")
        for name, colour in self.classes.items():
            if not CLASS_NAME.match(name):
                raise ConfigError(f"classes.{name}: class names use letters, digits, space, _ . + - (max 63)")
            if not HEX_COLOUR.match(colour):
                raise ConfigError(f"classes.{name}: colour {colour!r} is not #RRGGBB")
        for source, target in self.aliases.items():
            if target not in self.classes:
                raise ConfigError(f"aliases.{source}: {target!r} is not one of the classes")
        if self.ok_class is not None and self.ok_class not in self.classes:
            raise ConfigError(f"ok_class: {self.ok_class!r} is not one of the classes")
        if self.kind == "anomaly" and (self.ok_class is None or len(self.classes) < 2):
            # The anomaly model scores "unlike the OK parts": it needs to know which class is OK, and one NG class.
            raise ConfigError("kind anomaly: needs ok_class and at least one other (NG) class, e.g. OK and NG")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes)

    @property
    def min_item_agreement(self) -> float:
        if self.agreement.min_item is not None:
            return self.agreement.min_item
        return 0.7 if self.kind == "segment" else 1.0


@dataclass(frozen=True)
class LabelStudioDatabase:
    """params.yaml `labelstudio.database`: where Label Studio keeps projects, tasks and annotations."""

    # sqlite: a file in state_dir (one annotator at a time is fine; several writing at once wait on its lock).
    # postgresql: a server several annotators and Label Studio's workers write to at once.
    engine: str = "sqlite"
    host: str = "127.0.0.1"
    port: int = 5432
    name: str = "labelstudio"
    user: str = "labelstudio"
    # The password: CRUX_LS_DB_PASSWORD, else this file (0600, never in git), else none (trust/peer auth).
    password_file: Path | None = None

    def __post_init__(self) -> None:
        if self.engine not in ("sqlite", "postgresql"):
            raise ConfigError(f"labelstudio.database.engine: {self.engine!r} is not one of sqlite, postgresql")
        if not 0 < self.port < 65536:
            raise ConfigError(f"labelstudio.database.port: {self.port} is not a TCP port")
        for key in ("host", "name", "user"):
            if not getattr(self, key) or any(c.isspace() for c in getattr(self, key)):
                raise ConfigError(f"labelstudio.database.{key}: {getattr(self, key)!r} must be one non-empty word")


@dataclass(frozen=True)
class LabelStudioConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Label Studio serves local images only below this folder (LOCAL_FILES_DOCUMENT_ROOT).
    files_root: Path = Path("..")
    # Where the server keeps its SQLite database, media, logs, pid file and generated secrets.
    state_dir: Path = Path(".crux/labelstudio")
    # Label Studio refuses storage endpoints and webhook URLs on private addresses (its SSRF guard); the
    # webhook receiver, MinIO or a test S3 on this machine need it off. Keep it on when users you do not
    # trust can create storages in a Label Studio that sees an internal network.
    block_private_urls: bool = False
    # The address annotators' browsers use (your reverse proxy, e.g. https://label.plant.example); every URL CRUX
    # prints (sign-up link, review queue) and Label Studio's own links use it. None = the bind address.
    public_url: str | None = None
    projects: Mapping[str, ProjectSpec] = field(default_factory=lambda: types.MappingProxyType({}))
    # Label Studio's own database (see crux.label.server.LabelStudioDatabase): SQLite in state_dir, or PostgreSQL.
    database: LabelStudioDatabase = field(default_factory=lambda: LabelStudioDatabase())

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"labelstudio.port: {self.port} is not a TCP port")
        if self.public_url is not None and not re.match(r"^https?://[^/\s]+(/\S*)?\Z", self.public_url):
            raise ConfigError(f"labelstudio.public_url: {self.public_url!r} is not an http(s) URL")
        for name in self.projects:
            if not PROJECT_NAME.match(name):
                raise ConfigError(f"labelstudio.projects.{name}: names use a-z, 0-9, _ and - (max 63)")

    def project(self, name: str) -> ProjectSpec:
        try:
            return self.projects[name]
        except KeyError:
            raise unknown_name("project", name, list(self.projects)) from None


# --------------------------------------------------------------------------------------------------
# Dataset section (snapshot, versions, health)


@dataclass(frozen=True)
class HealthOptions:
    """Thresholds of `crux data check` (params.yaml `dataset.health`)."""

    min_class_count: int = 10  # images per class below which a class is flagged
    tiny_box_px: float = 4.0  # boxes narrower or lower than this (pixels) are flagged
    bounds_tolerance_px: float = 0.5  # rounding slack before a box counts as out of bounds
    near_duplicate_bits: int = 4  # dHash Hamming distance (of 64 bits) at or below which images are near duplicates
    near_duplicates: bool = True  # needs every image decoded once; off for a quick check
    speck_px: int = 10  # segmentation: connected mask regions smaller than this (pixels) are flagged
    verify_hashes: bool = True  # hash every image against the manifest's sha256 (what `prepare` checks); off: quicker


class SplitError(CruxError, ValueError):
    pass


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) fractions: three, none negative, summing to 1."""
    if len(ratios) != 3:
        raise SplitError(f"split ratios are (train, val, test), got {list(ratios)!r}")
    train, val, test = (float(r) for r in ratios)
    if min(train, val, test) < 0:
        raise SplitError(f"split ratios must not be negative, got {list(ratios)!r}")
    if abs(train + val + test - 1.0) > 1e-6:
        raise SplitError(f"split ratios must sum to 1, got {list(ratios)!r} (sum {train + val + test})")
    return (train, val, test)


@dataclass(frozen=True)
class DatasetConfig:
    # Each project's dataset lives in <root>/<project>, versioned by its own <root>/<project>.dvc.
    root: Path = Path("data")
    split: tuple[float, ...] = (0.8, 0.1, 0.1)
    fetch_workers: int = 4
    retries: int = 3
    # Segmentation: a mask whose new version overlaps the old one less than this (pixel IoU) is a relabel.
    mask_relabel_iou: float = 0.9
    health: HealthOptions = field(default_factory=HealthOptions)

    def __post_init__(self) -> None:
        try:
            validate_ratios(self.split)
        except SplitError as exc:
            raise ConfigError(f"dataset.split: {exc}") from exc
        if self.fetch_workers < 1 or self.retries < 0:
            raise ConfigError("dataset.fetch_workers must be >= 1 and dataset.retries >= 0")
        if not 0.0 < self.mask_relabel_iou <= 1.0:
            raise ConfigError(f"dataset.mask_relabel_iou: {self.mask_relabel_iou} is not in (0, 1]")
        if isinstance(self.health, Mapping):
            object.__setattr__(self, "health", from_mapping(HealthOptions, self.health, "dataset.health"))
        if len(self.root.parts) != 1 or self.root.is_absolute():
            raise ConfigError(
                f"dataset.root: {self.root} must be one folder name in the project (its LINE.dvc files live in it)"
            )

    def project_dir(self, project: str) -> Path:
        return self.root / project
