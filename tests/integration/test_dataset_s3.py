"""DVC push/pull and s3:// image fetching against a real moto S3 server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from crux.data import versioning as V
from crux.data.manifest import read_manifest
from crux.data.snapshot import build_dataset
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, box, image_bytes, ls_task, write_export

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(moto_endpoint: str, s3_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    # The endpoint is passed explicitly (DVC remote option, fetcher storage options), not through the env.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    return moto_endpoint


def test_images_from_s3_and_dvc_push_pull_through_s3(s3: str, tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket="images")
    client.create_bucket(Bucket="dvc")
    tasks = []
    for n in range(1, 4):
        client.put_object(Bucket="images", Key=f"line1/{n}.jpg", Body=image_bytes(n))
        tasks.append(
            ls_task(n, f"s3://images/line1/{n}.jpg", sha256=None, original_name=f"{n}.jpg", width=64, height=48,
                    annotations=[Ann([box("crazing", 1, 1, 20, 20)])])
        )  # fmt: skip
    tasks.append(ls_task(9, "s3://images/line1/gone.jpg", sha256=None, original_name="g.jpg", width=1, height=1,
                         annotations=[Ann([box("crazing", 0, 0, 1, 1)])]))  # fmt: skip

    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@crux.local"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    V.init_repo(repo)
    V.set_remote(repo, "s3://dvc/store", options={"endpointurl": s3})

    fetch = make_fetcher(storage_options={"client_kwargs": {"endpoint_url": s3}})
    export = write_export(tmp_path / "export.json", tasks)
    summary = build_dataset(export, repo / "data", "detect", ["crazing"], None, fetch, (0.8, 0.1, 0.1))
    assert summary.items == 3
    assert [(e.task_id, e.reason.split(":")[0]) for e in summary.excluded] == [(9, "not found")]

    result = V.commit_version(repo, project="s3")
    assert result is not None
    assert client.list_objects_v2(Bucket="dvc").get("KeyCount", 0) > 3  # 3 images + manifest files + .dir

    items = read_manifest(repo / "data" / "manifest.jsonl")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    V.pull(repo)
    assert read_manifest(repo / "data" / "manifest.jsonl") == items
    assert all((repo / "data" / i.image).is_file() for i in items)
