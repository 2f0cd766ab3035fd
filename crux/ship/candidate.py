"""What a candidate must be before it is gated: a card of the one schema predict and the edge load, and a model
that runs as the edge runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crux.errors import CruxError
from crux.ship.releases import PublishError

if TYPE_CHECKING:
    from crux.inference import ModelCard


def candidate_card(card_path: Path) -> ModelCard:
    """The model card `crux export` wrote, checked against the one schema predict and the edge load
    (crux.inference.ModelCard: ranges, classes, format, the model file's name and sha256)."""
    from crux.inference import ModelError, read_card

    try:
        return read_card(card_path)
    except ModelError as exc:
        raise PublishError(str(exc)) from None


# Validation images publish runs a candidate on (besides the synthetic frame): a few prove the path, many cost time.
CHECK_IMAGES = 4


def check_model_runs(export_dir: Path, card: ModelCard, model_file: str, images: Sequence[Path] = ()) -> None:
    """Refuse a model that cannot run as the edge runs it: its file must be a plain name in `export_dir` matching the
    card's sha256, load in ONNX Runtime with the card's input, and give finite outputs of the card's shape through the
    shared preprocessing and decoding, on a synthetic frame and on the given validation images."""
    from crux.inference import OnnxModel, model_file_in

    try:
        model = OnnxModel(model_file_in(export_dir, card, model_file), card)
        model.warm_up()  # the synthetic frame: every model, whether or not validation images are at hand
        for image in list(images)[:CHECK_IMAGES]:
            model.predict_file(Path(image))
    except CruxError as exc:  # ModelError, ModelOutputError, an unreadable validation image
        raise PublishError(f"{export_dir}: refused, the model does not run as the edge runs it: {exc}") from None
