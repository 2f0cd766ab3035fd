"""Train, evaluate and export one line (`dvc repro`), then push the outputs to the DVC remote."""

from __future__ import annotations

from prefect import flow

from flows.tasks import push_task, reproduce_task


@flow(name="train")
def train(line: str, params_path: str = "params.yaml", quick: bool = False) -> None:
    reproduce_task(line, params_path, quick)
    push_task(params_path)
