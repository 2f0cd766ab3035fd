"""The sources `crux import` reads, one module per label format (mirroring `crux.data.formats`, which writes them).

`SCANNERS` finds a format's scanner by its `--labels` name; a new format is a module with a `Scanner` and one entry
here. `crux.label.sources.scan.scan_source` runs one over a source.
"""

from __future__ import annotations

from crux.label.sources.coco_source import scan_coco
from crux.label.sources.folders_source import scan_folders
from crux.label.sources.masks_source import scan_masks
from crux.label.sources.source_items import Scanner
from crux.label.sources.unlabeled_source import scan_unlabeled
from crux.label.sources.yolo_source import scan_yolo

SCANNERS: dict[str, Scanner] = {
    "yolo": scan_yolo,
    "coco": scan_coco,
    "folders": scan_folders,
    "masks": scan_masks,
    "none": scan_unlabeled,
}
LABEL_FORMATS = tuple(SCANNERS)
