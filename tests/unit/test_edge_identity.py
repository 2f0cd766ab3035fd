"""Issue #25 defect 12: an edge box's ingest URL and station name come from `crux edge run`'s flags, else the
environment (CRUX_INGEST_URL, CRUX_STATION), else params.yaml, and a bad value names where it came from."""

from __future__ import annotations

import pytest

from crux.config import ConfigError
from crux.edge.runtime import EdgeConfig
from crux.settings import edge_identity

PARAMS = EdgeConfig(ingest_url="http://params:8700", station="from-params")
ENV = {"CRUX_INGEST_URL": "http://env:8700", "CRUX_STATION": "from-env"}


def test_the_flag_wins_over_the_environment_and_the_params_file() -> None:
    cfg = edge_identity(PARAMS, "http://flag:8700", "from-flag", ENV)
    assert (cfg.ingest_url, cfg.station) == ("http://flag:8700", "from-flag")


def test_the_environment_wins_over_the_params_file() -> None:
    cfg = edge_identity(PARAMS, None, None, ENV)
    assert (cfg.ingest_url, cfg.station) == ("http://env:8700", "from-env")


def test_the_params_file_is_kept_when_nothing_overrides_it() -> None:
    cfg = edge_identity(PARAMS, None, None, {"CRUX_STATION": "  "})  # an empty variable counts as unset
    assert (cfg.ingest_url, cfg.station) == ("http://params:8700", "from-params")
    assert cfg.threads == PARAMS.threads  # nothing else changes


def test_each_value_is_taken_on_its_own() -> None:
    cfg = edge_identity(PARAMS, None, "from-flag", ENV)
    assert (cfg.ingest_url, cfg.station) == ("http://env:8700", "from-flag")


@pytest.mark.parametrize(
    ("url", "station", "env", "where"),
    [
        ("ftp://x", None, {}, "--ingest-url"),
        (None, None, {"CRUX_INGEST_URL": "ingest:8700"}, "CRUX_INGEST_URL"),
        (None, "../etc", {}, "--station"),
        (None, None, {"CRUX_STATION": "cam 1"}, "CRUX_STATION"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    url: str | None, station: str | None, env: dict[str, str], where: str
) -> None:
    with pytest.raises(ConfigError, match=where):
        edge_identity(PARAMS, url, station, env)


def test_a_bad_station_in_the_params_file_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"edge\.station"):
        edge_identity(EdgeConfig(station="a/b"), None, None, {})
