"""Labeled-data management: Label Studio snapshots as versioned, content-addressed datasets.

Submodules are imported explicitly (`from crux.data.snapshot import build_dataset`); this package
imports nothing heavy so that `crux --help` stays fast.
"""
