"""Plain-torch models (no torchvision). Import `crux.models.classifier` / `crux.models.detector` directly;
this package imports nothing heavy so `crux.kinds` can reference it lazily."""
