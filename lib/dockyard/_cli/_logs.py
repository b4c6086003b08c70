"""`dockyard logs JOB_ID [--follow]`: a job's output read from its container's log on the
engine, found by the instance's labels, and masked with what this command can know of
the job's secrets."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from docker.errors import create_api_error_from_http_exception

from .._environment import worker_masker
from .._naming import LabelSchema
from .._output_lines import FrameDecoder, lines_of_frames
from .._secrets import Masker, job_data_secrets, router_secret_values
from ._engine import base_config, engine
from ._exits import EXIT_JOBS_FAILED, EXIT_OK, say

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Mapping

    from .._config import RouterConfig
    from .._docker import DockerGateway

_CONNECT_S = 10.0


def cmd_logs(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.label_prefix is not None:
        overrides["label_prefix"] = args.label_prefix
    config = base_config(args, **overrides)
    labels = LabelSchema(config.label_prefix)
    with engine(config) as gateway:
        container = find_job_container(gateway, config, labels, args.job_id)
        if container is None:
            say(
                f"no container of router instance {config.router_instance_id!r} for job "
                f"{args.job_id!r} (it has not started, or it was removed); "
                f"`dockyard ps --instance {config.router_instance_id}` lists them"
            )
            return EXIT_JOBS_FAILED
        container_id = str(container["Id"])
        info = gateway.inspect(container_id)
        masker = container_masker(info, labels)
        frames = _log_frames(gateway, container_id, follow=args.follow)
        for stream, line in lines_of_frames(frames, masker):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(line + "\n")
            if args.follow:
                out.flush()
    return EXIT_OK


def find_job_container(
    gateway: DockerGateway, config: RouterConfig, labels: LabelSchema, job_id: str
) -> dict[str, Any] | None:
    """The instance's container labelled with this job id: the running one, else the one
    created last. Compared here, not in a label filter: a job id is arbitrary text."""
    owned = gateway.list_containers(labels.ownership_filter(config.router_instance_id), all=True)
    mine = [c for c in owned if (c.get("Labels") or {}).get(labels.job_id) == job_id]
    if not mine:
        return None
    return max(mine, key=lambda c: (c.get("State") == "running", int(c.get("Created") or 0)))


def container_masker(info: Mapping[str, Any], labels: LabelSchema) -> Masker:
    """The secrets this command can know of: the container's secret variables (as a
    router would mask them) and the strings of its inline `JOB_DATA`, plus the secrets
    in this command's own environment. Offloaded job data (`JOB_DATA_REDIS_KEY`) and
    secrets the router held but neither passed to the worker nor has here are unknown."""
    env: dict[str, str] = {}
    for item in (info.get("Config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    found = (info.get("Config") or {}).get("Labels") or {}
    public = (
        found.get(labels.job_id),
        found.get(labels.project_id),
        found.get(labels.work_item_id),
    )
    job_data: list[str] = []
    raw = env.get("JOB_DATA")
    if raw:
        try:
            job_data = job_data_secrets(json.loads(raw), raw, public)
        except ValueError:
            job_data = [raw]
    return worker_masker(env).merged(
        Masker.of(job_data), Masker.of(router_secret_values(os.environ))
    )


def _log_frames(
    gateway: DockerGateway, container_id: str, *, follow: bool
) -> Iterator[tuple[int, bytes]]:
    """`(stream type, bytes)` pieces of the container's log (workers have no TTY, so the
    engine sends frames), to the end, or with `follow` until the container stops."""
    api = gateway.api
    url = f"{api.base_url}/v{api.api_version}/containers/{quote(container_id, safe='')}/logs"
    params: dict[str, str | int] = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all"}

    def open_logs() -> requests.Response:
        # No read timeout: followed logs go quiet for as long as the job does.
        response = api.get(url, params=params, stream=True, timeout=(_CONNECT_S, None))
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as err:
            response.close()
            create_api_error_from_http_exception(err)  # docker-py's typed error, the table's
        return response

    response = gateway.calls.run("logs", open_logs)
    decoder = FrameDecoder()
    try:
        # Chunks as the engine flushes them (a streamed answer is chunk-encoded).
        for chunk in response.iter_content(chunk_size=None):
            yield from decoder.feed(chunk)
    finally:
        response.close()
