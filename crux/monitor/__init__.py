"""Monitoring of what the stations see against what the model was validated on.

`crux.monitor.drift` is pure (histograms, PSI, KS, the alarm decision) and sits with the vocabulary: the edge bins
its scores with it and `crux export` records the reference with it. `crux.monitor.watch` reads the ingest database
and records alarms; it sits above `crux.collect`.
"""
