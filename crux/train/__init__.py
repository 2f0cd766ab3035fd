"""Training pipeline: prepare → train → evaluate. Heavy modules (torch, lightning) import lazily from here."""
