"""Pydantic models of the HTTP API: the capture metadata posted by the edge and the listing."""

from __future__ import annotations

import datetime as dt
import typing
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from crux.collect.names import IDEMPOTENCY_KEY, check_name
from crux.collect.records import CaptureRecord


def _name(value: str) -> str:
    check_name(value, "name")
    return value


Name = Annotated[str, StringConstraints(max_length=64), AfterValidator(_name)]
# Class names follow crux.config.CLASS_NAME (they become Label Studio label values).
ClassName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,62}$")]
ModelVersion = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+@-]{0,127}$")]
Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Coord = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]

# The largest integer the database stores (SQLite and PostgreSQL BIGINT): ids and counters above it overflowed in the
# driver (a 500) instead of being refused (a 422, or a 404 for an id that cannot exist).
DB_INT_MAX = 2**63 - 1
MAX_CLASSES = 256
MAX_BOXES = 1000
# A region mask's RLE: a few hundred characters for a defect; this bounds a hostile one.
MAX_MASK_CHARS = 200_000


class Box(BaseModel):
    """One predicted box in pixels of the uploaded image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cls: ClassName = Field(alias="class")
    box: tuple[Coord, Coord, Coord, Coord] = Field(description="[x1, y1, x2, y2] in pixels")
    score: Score | None = None
    # A segmentation model's region: its mask over the whole image as a COCO compressed RLE string (the edge's
    # `crux predict` contract), so annotators get the capture pre-segmented.
    mask: Annotated[str, StringConstraints(max_length=MAX_MASK_CHARS, pattern=r"^[0-o]*$")] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        x1, y1, x2, y2 = self.box
        if not (x1 < x2 and y1 < y2):
            raise ValueError("box must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
        return self


class CaptureMetadata(BaseModel):
    """The `metadata` part of POST /v1/captures (a JSON object)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    station: Name
    line: Name
    captured_at: AwareDatetime = Field(description="ISO 8601 with a UTC offset, e.g. 2025-01-31T12:00:00Z")
    model_version: ModelVersion | None = None
    prediction: ClassName | None = Field(default=None, description="the edge model's top class")
    verdict: Literal["ok", "ng"] | None = Field(default=None, description="the edge's OK/NG decision")
    scores: dict[ClassName, Score] = Field(default_factory=dict, description="class -> probability/confidence")
    boxes: list[Box] = Field(default_factory=list, max_length=MAX_BOXES)
    original_name: Name | None = Field(default=None, description="file name on the edge (no path)")
    reason: Literal["ng", "uncertain", "sample"] | None = Field(
        default=None, description="why the edge kept the frame: an NG verdict, an uncertain prediction, or sampling"
    )

    @field_validator("scores")
    @classmethod
    def _few_classes(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} scores")
        return value

    @field_validator("captured_at")
    @classmethod
    def _plausible_time(cls, value: dt.datetime) -> dt.datetime:
        # Naive-UTC storage needs a representable UTC instant; year 1/9999 edges overflow on conversion.
        if not (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) <= value <= dt.datetime(9000, 1, 1, tzinfo=dt.UTC)):
            raise ValueError("captured_at must be between 1970 and 9000")
        return value

    def check_boxes_inside(self, width: int, height: int) -> None:
        """Boxes must lie within the decoded image (one pixel of slack for rounding at the edge)."""
        for i, b in enumerate(self.boxes):
            x1, y1, x2, y2 = b.box
            if x1 < -1 or y1 < -1 or x2 > width + 1 or y2 > height + 1:
                raise ValueError(f"boxes[{i}] {list(b.box)} lies outside the {width}x{height} image")
            if b.mask is not None:
                from crux.postprocess import rle_decode

                try:
                    rle_decode(b.mask, height, width)
                except ValueError as exc:
                    raise ValueError(f"boxes[{i}].mask: {exc}") from None


# One stored capture as returned by the API: the fields of `records.CaptureRecord`, declared there once. The model is
# built at run time, so mypy sees a plain model without those fields.
if typing.TYPE_CHECKING:
    CaptureOut = BaseModel
else:
    CaptureOut = create_model(
        "CaptureOut",
        __doc__="One stored capture as returned by the API.",
        **{name: (hint, ...) for name, hint in typing.get_type_hints(CaptureRecord).items()},
    )


class CaptureCreated(BaseModel):
    id: int
    sha256: str
    image_key: str
    # True when this response replays an earlier upload with the same Idempotency-Key.
    replayed: bool


class CapturePage(BaseModel):
    items: list[CaptureOut]
    # Pass as `after` to get the next page; null on the last page.
    next_after: int | None


class StationOut(BaseModel):
    """GET /v1/station: who a token belongs to, so that an edge can check its set-up before its first upload."""

    name: str
    line: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    storage: str
    schema_revision: str | None
    version: str


IDEMPOTENCY_PATTERN = IDEMPOTENCY_KEY.pattern
