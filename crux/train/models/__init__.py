"""Plain-torch models (no torchvision). Import `crux.train.models.classifier` / `crux.train.models.detector` directly;
this package imports nothing heavy so `crux.kinds` can reference it lazily."""
