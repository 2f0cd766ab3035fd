"""The only reader of params.yaml and the environment: typed config values for the CLI and the flows."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError, DatasetConfig, LabelStudioConfig, from_mapping, unknown_name

if TYPE_CHECKING:  # the stages' config types; their modules load lazily, so `crux --help` stays fast
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from label_studio_sdk import LabelStudio
    from sqlalchemy.engine import Engine

    from crux.collect.ingest_settings import IngestSettings
    from crux.console.deps import ConsoleConfig
    from crux.data.gitsync import GitConfig
    from crux.edge.runtime import EdgeConfig
    from crux.label.server import Credentials, ServerSettings
    from crux.loop.steps import LabelStudioAccess
    from crux.loop.trigger import WebhooksConfig
    from crux.monitor.drift import MonitorConfig
    from crux.ship.gate import GateConfig


def warn(message: str) -> None:
    """A configuration warning on stderr (settings never stop on one)."""
    print(f"warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Context:
    root: Path
    params: dict[str, Any]

    def section(self, name: str) -> Any:
        return self.params.get(name)

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else (self.root / value)


# The top-level sections of params.yaml; anything else is a typo (`trian:`) that would silently be ignored.
PARAMS_SECTIONS = (
    "labelstudio",
    "ingest",
    "dataset",
    "pipeline",
    "data",
    "augment",
    "train",
    "evaluate",
    "export",
    "gate",
    "edge",
    "deploy",
    "trigger",
    "webhooks",
    "git",
    "monitor",
)


def load_context(params_path: Path) -> Context:
    import difflib

    import yaml

    if not params_path.exists():
        raise ConfigError(f"{params_path}: params file not found (run crux from the project folder or pass --params)")
    try:
        params = yaml.safe_load(params_path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{params_path}{at}: YAML syntax error: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{params_path}: cannot read the params file ({exc})") from None
    if params is None:
        raise ConfigError(f"{params_path}: the params file is empty (expected sections: {', '.join(PARAMS_SECTIONS)})")
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path}: expected a mapping of sections")
    for name in params:
        if name not in PARAMS_SECTIONS:
            close = difflib.get_close_matches(str(name), PARAMS_SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(PARAMS_SECTIONS)})"
            raise ConfigError(f"{params_path}: unknown top-level section {name!r}{hint}")
    _check_line_names(params, params_path)
    return Context(root=params_path.resolve().parent, params=params)


# Sections keyed by line name (the project names of labelstudio.projects): an entry naming no line would be ignored
# without a word (a typo in `gate.lines.neu-cls` drops that line's bar), so each must name a declared line.
LINE_KEYED = (("gate", "lines"), ("pipeline", "overrides"))


def declared_lines(params: Mapping[str, Any]) -> list[str]:
    labelstudio = params.get("labelstudio")
    projects = labelstudio.get("projects") if isinstance(labelstudio, Mapping) else None
    return [str(name) for name in projects] if isinstance(projects, Mapping) else []


def trainable_lines(params: Mapping[str, Any]) -> list[str]:
    """THE list of lines CRUX trains: `pipeline.lines`, which dvc.yaml's stages `foreach` over (so a line outside it
    has no `prepare@LINE` … `export@LINE` to run). `crux deploy`, the cycle, `crux cycle`/`crux trigger` and the
    webhook receiver all take their lines from here; load_context checks that each names a declared project."""
    pipeline = params.get("pipeline")
    listed = pipeline.get("lines") if isinstance(pipeline, Mapping) else None
    return [str(name) for name in listed] if isinstance(listed, list) else []


class LineNotTrainableError(ConfigError):
    """A declared line that dvc.yaml has no stages for (not in pipeline.lines): refused before any side effect."""


def require_trainable(ctx: Context, line: str) -> None:
    """Refuse, before any snapshot or commit, a cycle of a line that cannot train: an undeclared name gets the
    declared ones ("did you mean"), a declared line outside pipeline.lines gets how to enable it."""
    labelstudio_config(ctx).project(line)  # ConfigError naming the declared projects
    if line not in trainable_lines(ctx.params):
        raise LineNotTrainableError(
            f"line {line!r} is declared (labelstudio.projects.{line}) but not in pipeline.lines, so dvc.yaml has no "
            f"stages to train it and its cycle would commit a snapshot it cannot train. Enable it: make its first "
            f"dataset version (`crux snapshot {line} --commit`), then add {line} to pipeline.lines in params.yaml "
            f"(trainable now: {', '.join(trainable_lines(ctx.params)) or 'none'})"
        )


def untrainable_lines(ctx: Context) -> list[str]:
    """Declared lines outside pipeline.lines (deploy skips them and says so)."""
    trainable = set(trainable_lines(ctx.params))
    return [name for name in declared_lines(ctx.params) if name not in trainable]


def git_config(ctx: Context) -> GitConfig:
    from crux.data.gitsync import GitConfig

    return from_mapping(GitConfig, ctx.section("git") or {}, "git")


def _check_line_names(params: Mapping[str, Any], params_path: Path) -> None:
    lines = declared_lines(params)
    for section, key in LINE_KEYED:
        block = params.get(section)
        entries = block.get(key) if isinstance(block, Mapping) else None
        for name in entries if isinstance(entries, Mapping) else ():
            if str(name) not in lines:
                raise unknown_name(f"{params_path}: {section}.{key}.{name}: line", str(name), lines)
    pipeline = params.get("pipeline")
    listed = pipeline.get("lines") if isinstance(pipeline, Mapping) else None
    for name in listed if isinstance(listed, list) else ():
        if str(name) not in lines:
            raise unknown_name(f"{params_path}: pipeline.lines: line", str(name), lines)
    gate = params.get("gate", ...)  # absent: nothing was written, so nothing was dropped
    if gate is None or (isinstance(gate, Mapping) and not gate):
        # `gate:` with nothing under it replaces every plant floor and ceiling with the kinds' blind-model defaults.
        raise ConfigError(
            f"{params_path}: gate is empty, which drops every floor of this plant (only the kinds' defaults would "
            "apply); write `gate: {defaults_only: true}` to mean that"
        )


def labelstudio_config(ctx: Context) -> LabelStudioConfig:
    return from_mapping(LabelStudioConfig, ctx.section("labelstudio"), "labelstudio")


def server_settings(ctx: Context, host: str | None = None, port: int | None = None) -> ServerSettings:
    from crux.label.server import ServerSettings

    cfg = labelstudio_config(ctx)
    venv = Path(os.environ.get("CRUX_LS_VENV") or ctx.root / ".venv-ls")
    extra = {} if cfg.block_private_urls else {"SSRF_PROTECTION_ENABLED": "false"}
    extra.update(labelstudio_database_env(ctx))
    return ServerSettings(
        venv=venv,
        state_dir=ctx.path(cfg.state_dir),
        host=host or cfg.host,
        port=port or int(os.environ.get("CRUX_LS_PORT") or cfg.port),
        files_root=ctx.path(cfg.files_root),
        extra_env=extra or None,
        public_url=cfg.public_url,
    )


def labelstudio_database_env(ctx: Context) -> dict[str, str]:
    """Label Studio's database settings from `labelstudio.database`, the password from CRUX_LS_DB_PASSWORD or the
    0600 `password_file` (never from params.yaml, which is in git)."""
    from crux.label.server import database_env, read_secret_file

    db = labelstudio_config(ctx).database
    password = os.environ.get("CRUX_LS_DB_PASSWORD") or None
    if password is None and db.password_file is not None and db.engine == "postgresql":
        password = read_secret_file(ctx.path(db.password_file), "labelstudio.database.password_file")
    return database_env(db.engine, db.host, db.port, db.name, db.user, password)


def labelstudio_credentials(settings: ServerSettings) -> tuple[Credentials, bool]:
    from crux.label.server import load_or_create_credentials

    given = {
        "username": os.environ.get("CRUX_LS_USERNAME"),
        "password": os.environ.get("CRUX_LS_PASSWORD"),
        "token": os.environ.get("CRUX_LS_TOKEN"),
    }
    return load_or_create_credentials(settings.credentials_path, given)


def labelstudio_access(ctx: Context) -> LabelStudioAccess:
    """The configured server: CRUX_LS_URL + CRUX_LS_TOKEN for an external one, else ours."""
    from crux.loop.steps import LabelStudioAccess

    if os.environ.get("CRUX_LS_URL"):
        token = os.environ.get("CRUX_LS_TOKEN")
        if not token:
            raise ConfigError("CRUX_LS_URL is set but CRUX_LS_TOKEN is not")
        return LabelStudioAccess(os.environ["CRUX_LS_URL"].rstrip("/"), token, None)
    settings = server_settings(ctx)
    credentials, _ = labelstudio_credentials(settings)
    return LabelStudioAccess(settings.url, credentials.token, settings.files_root)


def labelstudio_public_url(ctx: Context) -> str:
    """The address annotators' browsers use: labelstudio.public_url, else an external server's CRUX_LS_URL, else
    our server's own URL (`ServerSettings.public` covers the first and the last)."""
    if os.environ.get("CRUX_LS_URL") and not labelstudio_config(ctx).public_url:
        return os.environ["CRUX_LS_URL"].rstrip("/")
    return server_settings(ctx).public


def labelstudio_client(ctx: Context) -> LabelStudio:
    from crux.label.client import connect

    access = labelstudio_access(ctx)
    return connect(access.url, access.token)


def webhooks_config(ctx: Context) -> WebhooksConfig:
    from crux.loop.trigger import WebhooksConfig

    return from_mapping(WebhooksConfig, ctx.section("webhooks"), "webhooks")


def webhook_secret(ctx: Context) -> str:
    from crux.loop.trigger import load_or_create_secret

    return os.environ.get("CRUX_WEBHOOK_SECRET") or load_or_create_secret(ctx.path(webhooks_config(ctx).secret_file))


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_storage_options() -> dict[str, Any]:
    """Credentials Label Studio needs to serve an S3 source, from the usual AWS variables."""
    options = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "region_name": os.environ.get("AWS_DEFAULT_REGION"),
        "s3endpoint": _s3_endpoint(),
    }
    return {key: value for key, value in options.items() if value}


def dataset_config(ctx: Context) -> DatasetConfig:
    return from_mapping(DatasetConfig, ctx.section("dataset"), "dataset")


def s3_fetch_options() -> dict[str, Any]:
    endpoint = _s3_endpoint()
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def params_for_line(params: dict[str, Any], line: str | None) -> dict[str, Any]:
    from crux.train.recipe import line_params

    if line is None:
        return params
    lines = declared_lines(params)
    if line not in lines:  # line_params would merge no overrides and train with the shared defaults, silently
        raise unknown_name("--line", line, lines)
    return line_params(params, line)


# Where `crux keys init` writes the signing key pair (outside git: .crux/ is ignored).
DEFAULT_PRIVATE_KEY = Path(".crux/keys/publish.key")
DEFAULT_PUBLIC_KEY = Path(".crux/keys/publish.pub")


def edge_config(ctx: Context, *, ingest_url: str | None = None, station: str | None = None) -> EdgeConfig:
    """params.yaml `edge:`, with this box's identity (ingest URL, station name) from `crux edge run`'s flags, else
    CRUX_INGEST_URL / CRUX_STATION, else the params file: one params file in git serves every station of a line."""
    from crux.edge.runtime import EdgeConfig

    return edge_identity(from_mapping(EdgeConfig, ctx.section("edge"), "edge"), ingest_url, station, os.environ)


# Environment variables that set a box's identity without editing the shared params file.
INGEST_URL_ENV = "CRUX_INGEST_URL"
STATION_ENV = "CRUX_STATION"


def edge_identity(cfg: EdgeConfig, ingest_url: str | None, station: str | None, env: Mapping[str, str]) -> EdgeConfig:
    """`cfg` with `ingest_url` and `station` taken from the flag, else the environment, else kept; each is checked
    (an http(s) URL, a station name the ingest accepts) and the error names where the bad value came from."""
    import dataclasses

    from crux.collect.names import check_name

    changes: dict[str, Any] = {}
    url, url_from = _first((ingest_url, "--ingest-url"), (env.get(INGEST_URL_ENV), INGEST_URL_ENV))
    if url is not None:
        changes["ingest_url"] = url
    name, name_from = _first((station, "--station"), (env.get(STATION_ENV), STATION_ENV))
    if name is not None:
        changes["station"] = name
    result = dataclasses.replace(cfg, **changes)
    if result.ingest_url is not None and not result.ingest_url.startswith(("http://", "https://")):
        where = url_from or "edge.ingest_url"
        raise ConfigError(f"{where}: {result.ingest_url!r} is not an http:// or https:// URL of the ingest service")
    try:
        check_name(result.station, "station")
    except ValueError as exc:
        raise ConfigError(f"{name_from or 'edge.station'}: {exc}") from None
    return result


def _first(*candidates: tuple[str | None, str]) -> tuple[str | None, str | None]:
    """The first non-empty value and where it came from; an empty variable (`CRUX_STATION=`) counts as unset."""
    for value, where in candidates:
        if value is not None and value.strip():
            return value.strip(), where
    return None, None


def model_remote(ctx: Context, remote: str | None) -> str:
    """The model remote: an fsspec URL, or a folder relative to the project."""
    url = remote or edge_config(ctx).remote
    return url if "://" in url else str(ctx.path(Path(url)))


def signing_key(ctx: Context, path: Path | None) -> Ed25519PrivateKey:
    """The signing key: CRUX_SIGNING_KEY (PEM text, e.g. a CI secret), else a file outside git."""
    from crux.ship.signing import load_private_key

    if os.environ.get("CRUX_SIGNING_KEY"):
        return load_private_key(os.environ["CRUX_SIGNING_KEY"])
    key_file = path or Path(os.environ.get("CRUX_SIGNING_KEY_FILE") or ctx.path(DEFAULT_PRIVATE_KEY))
    if not key_file.is_file():
        raise ConfigError(f"no signing key at {key_file}: run `crux keys init` or set CRUX_SIGNING_KEY")
    return load_private_key(key_file.read_bytes())


def public_keys(ctx: Context) -> list[Ed25519PublicKey]:
    from crux.ship.signing import load_public_keys

    paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"edge.public_keys: {', '.join(missing)} not found (run `crux keys init`)")
    return load_public_keys(paths)


def trusted_keys(ctx: Context) -> list[Ed25519PublicKey]:
    """edge.public_keys for verifying production before publish/rollback; files not there are skipped (warned)."""
    from crux.ship.signing import load_public_keys

    paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        warn(f"edge.public_keys: {', '.join(missing)} not found; not trusted")
    return load_public_keys([p for p in paths if p.is_file()])


def gate_config(ctx: Context) -> GateConfig:
    from crux.ship.gate import GateConfig

    return from_mapping(GateConfig, ctx.section("gate"), "gate")


def check_model_fits_line(ctx: Context, line: str, export_dir: Path) -> None:
    """Refuse a model made for another line: its card's kind, classes (in order), OK class and input channels must
    be the line's project (`labelstudio.projects.LINE`, channels from `data` with the line's overrides)."""
    import json

    from crux.train.recipe import line_params

    projects = labelstudio_config(ctx).projects
    if not projects:
        warn(f"labelstudio.projects is empty: {line}'s model is not checked against a project")
        return
    spec = labelstudio_config(ctx).project(line)  # ConfigError naming the known projects
    card_path = Path(export_dir) / "card.json"
    try:
        card = json.loads(card_path.read_text())
        kind, classes = card["kind"], list(card["classes"])
        channels = int(card["input"]["channels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{card_path}: not a model card of `crux export` ({type(exc).__name__}: {exc})") from None
    data = line_params(ctx.params, line).get("data") or {}
    want_channels = int(data.get("channels", 1))
    problems = []
    if kind != spec.kind:
        problems.append(f"kind {kind!r}, the line is {spec.kind!r}")
    if classes != list(spec.classes):
        problems.append(f"classes {classes}, the line has {list(spec.classes)}")
    if card.get("ok_class") != spec.ok_class:
        problems.append(f"OK class {card.get('ok_class')!r}, the line's is {spec.ok_class!r}")
    if channels != want_channels:
        problems.append(f"{channels} input channel(s), the line's data has {want_channels}")
    if problems:
        raise ConfigError(
            f"{card_path} is not a model for line {line!r} (labelstudio.projects.{line}): " + "; ".join(problems)
        )


def ingest_settings(ctx: Context) -> IngestSettings:
    """`ingest:` from params, with relative SQLite and storage paths anchored at the project folder."""
    import dataclasses

    from crux.collect import IngestSettings

    settings = from_mapping(IngestSettings, ctx.section("ingest"), "ingest")
    changes: dict[str, Any] = {}
    prefix = "sqlite:///"
    if settings.database_url.startswith(prefix) and not settings.database_url.startswith(prefix + "/"):
        database = ctx.path(Path(settings.database_url[len(prefix) :]))
        database.parent.mkdir(parents=True, exist_ok=True)
        changes["database_url"] = prefix + str(database)
    if "://" not in settings.storage_url:
        changes["storage_url"] = str(ctx.path(Path(settings.storage_url)))
    return dataclasses.replace(settings, **changes)


def ingest_engine(ctx: Context) -> Engine:
    from crux.collect import create_db_engine, migrate

    engine: Engine = create_db_engine(ingest_settings(ctx).database_url)
    migrate(engine)
    return engine


def prefect_defaults(ctx: Context) -> None:
    """A local Prefect (ephemeral API on SQLite under .crux/prefect) unless the user configured one."""
    os.environ.setdefault("PREFECT_HOME", str(ctx.root / ".crux" / "prefect"))
    # The 20 s default start-up budget of the ephemeral server is tight on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def prefect_worker_environment(ctx: Context, heartbeat_s: int) -> dict[str, str]:
    """The environment of a `crux worker start` worker: this process's, plus CRUX_WORKDIR = this project folder
    (the cycle deployments' pull step moves each run there) and the flow-run heartbeat period that the crashed-run
    automation of `crux deploy` watches."""
    return {
        **os.environ,
        "CRUX_WORKDIR": str(ctx.root),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_s),
    }


def prefect_api_configured() -> bool:
    """Whether the user points at a Prefect server (else flows run on the local ephemeral API)."""
    return bool(os.environ.get("PREFECT_API_URL"))


def station_token() -> str:
    """This edge station's upload token (CRUX_STATION_TOKEN), needed when an ingest URL is set."""
    token = os.environ.get("CRUX_STATION_TOKEN")
    if not token:
        raise ConfigError(
            "an ingest URL is set (--ingest-url, CRUX_INGEST_URL or edge.ingest_url): put this station's token in "
            "CRUX_STATION_TOKEN (`crux stations add NAME --line LINE` on the ingest host prints it)"
        )
    return token


def console_config(ctx: Context, admin_token: str | None, timeout_s: float) -> ConsoleConfig:
    """Every reader of the plant console, from params.yaml and the environment."""
    from crux.collect import create_db_engine, migrate
    from crux.console.deps import ConsoleConfig as Config
    from crux.console.deps import LineInfo
    from crux.console.sources import DatasetReader, IngestReader, LabelStudioReader, ModelReader
    from crux.ship.signing import load_public_keys

    projects = labelstudio_config(ctx).projects
    trainable = set(trainable_lines(ctx.params))
    lines = tuple(
        LineInfo(name, spec.title, spec.kind, spec.ok_class, name in trainable) for name, spec in projects.items()
    )
    settings = ingest_settings(ctx)
    engine = create_db_engine(settings.database_url)
    migrate(engine)  # the console may start before the ingest service ever did
    remote = model_remote(ctx, None)
    key_paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    # Missing keys do not stop the console: versions then show as "not checked" instead of trusted.
    keys = load_public_keys([p for p in key_paths if p.is_file()]) if any(p.is_file() for p in key_paths) else []
    access = labelstudio_access(ctx)
    return Config(
        lines=lines,
        ingest=IngestReader(engine, settings.storage_url, settings.storage_options),
        models=ModelReader(remote, keys, s3_storage_options() if remote.startswith("s3://") else None),
        datasets=DatasetReader(ctx.root, str(dataset_config(ctx).root)),
        labelstudio=LabelStudioReader(access.url, access.token, timeout_s=timeout_s),
        admin_token=admin_token,
        timeout_s=timeout_s,
        workspace=ctx.root,
        prefect_url=prefect_ui_url(),
    )


def monitor_config(ctx: Context) -> MonitorConfig:
    from crux.monitor.drift import MonitorConfig

    return from_mapping(MonitorConfig, ctx.section("monitor"), "monitor")


def console_token() -> str | None:
    """The console's admin token from CRUX_CONSOLE_TOKEN (else a generated 0600 file, see crux.console.serve)."""
    return os.environ.get("CRUX_CONSOLE_TOKEN")


def prefect_ui_url() -> str | None:
    """The Prefect UI to link to: PREFECT_UI_URL, else the server of PREFECT_API_URL (http://host:4200/api)."""
    env = os.environ
    if env.get("PREFECT_UI_URL"):
        return env["PREFECT_UI_URL"]
    api = env.get("PREFECT_API_URL", "")
    return api.removesuffix("/").removesuffix("/api") or None
