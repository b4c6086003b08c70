"""Images: single-flight pulls, and re-recording a committed image without its container config.

Pulls: concurrent callers for one image share one pull, and a failed pull is remembered for
a few seconds, so a burst of spawns needing an unreachable image asks the registry once
(a failing pull returns within milliseconds, long before the burst is over).

Re-recording: on engines that keep the legacy `container_config` (Docker 20.10 does),
`docker commit` copies the *container's* whole configuration into the image, with every
environment value the worker was started with, whatever the commit's `changes` say. Only
`Config` honours `changes`. `record_without_container_config` writes the image again from
its inspected `Config`, layers and history, through `docker load` of an archive holding just
the new image config: the engine already has every layer, so nothing is copied and the
layers stay shared, and the new image has neither `container_config` nor a parent.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import re
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from docker.errors import APIError

from ._docker import DockerGateway

__all__ = [
    "ImagePuller",
    "UnpullableImageError",
    "is_image_id",
    "record_without_container_config",
]

log = logging.getLogger("dockyard.images")

DEFAULT_FAILURE_TTL_S = 5.0
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}|[0-9a-f]{64}")


class UnpullableImageError(LookupError):
    """The image is a bare image id: absent locally, and no registry can serve it by id."""


def is_image_id(image: str) -> bool:
    """True for a full image id (`sha256:<64 hex>` or the bare 64 hex digits)."""
    return bool(_IMAGE_ID.fullmatch(image))


def _fresh_copy(err: BaseException) -> BaseException:
    """A copy of a shared error with an empty traceback.

    Re-raising one exception object from many threads would keep appending every raiser's
    frames to its traceback; each caller raises its own copy instead.
    """
    try:
        clone = copy.copy(err)
    except Exception:
        return err
    if type(clone) is not type(err):
        return err
    clone.__cause__ = err.__cause__
    clone.__suppress_context__ = err.__suppress_context__
    return clone.with_traceback(None)


class ImagePuller:
    """Single-flight pulls: concurrent callers for one image share the first caller's pull.

    A failure is remembered for `failure_ttl_s` seconds and handed to every caller in that
    window without asking the engine again; a success is not remembered (the image is then
    local, and a later miss means someone removed it).
    """

    def __init__(
        self,
        docker: DockerGateway,
        timeout_s: float,
        *,
        failure_ttl_s: float = DEFAULT_FAILURE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._docker = docker
        self._timeout_s = timeout_s
        self._failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[None]] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self.pulls_started = 0

    def pull(self, image: str) -> None:
        """Pull `image` (or join the pull under way); raises what the pull raised."""
        if is_image_id(image):
            raise UnpullableImageError(f"image {image} is not present and cannot be pulled by id")
        with self._lock:
            remembered = self._failures.get(image)
            if remembered is not None and self._clock() < remembered[0]:
                raise _fresh_copy(remembered[1])
            self._failures.pop(image, None)
            shared = self._in_flight.get(image)
            leader = shared is None
            if shared is None:
                shared = self._in_flight[image] = Future()
                self.pulls_started += 1
        if not leader:
            error = shared.exception()
            if error is not None:
                raise _fresh_copy(error)
            return
        log.info("pulling missing image", extra={"image": image})
        try:
            self._docker.pull(image, self._timeout_s)
        except BaseException as err:
            with self._lock:
                if isinstance(err, Exception) and self._failure_ttl_s > 0:
                    self._failures[image] = (self._clock() + self._failure_ttl_s, err)
                del self._in_flight[image]
            shared.set_exception(err)
            raise
        with self._lock:
            del self._in_flight[image]
        shared.set_result(None)
        log.info("pulled image", extra={"image": image})


# -- re-recording a committed image -------------------------------------------------------


def record_without_container_config(docker: DockerGateway, image_id: str, reference: str) -> str:
    """Write `image_id` again as `reference`, keeping its `Config`, layers and history.

    Returns the new image id. The old image is left in place (the caller removes it) and
    `reference` now names the new one.
    """
    info = docker.image_inspect(image_id)
    raw: Any = docker.api  # docker-py types neither history() nor load's stream
    history: list[dict[str, Any]] = list(raw.history(image_id))
    config = _image_config(info, history)
    body = json.dumps(config, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    archive = _config_only_archive(body, digest, reference, len(config["rootfs"]["diff_ids"]))
    response = raw._post(raw._url("/images/load"), data=archive, params={"quiet": "1"}, stream=True)
    try:
        raw._raise_for_status(response)
        for line in raw._stream_helper(response, decode=True):
            if "error" in line or "errorDetail" in line:
                detail = line.get("errorDetail") or {}
                raise APIError(f"load of {reference} failed: {line.get('error') or detail}")
    finally:
        response.close()
    new_id = f"sha256:{digest}"
    named = docker.image_inspect(reference).get("Id")
    if named != new_id:
        with contextlib.suppress(Exception):
            docker.remove_image(new_id)
        raise RuntimeError(f"{reference} is {named}, not the image just loaded ({new_id})")
    return new_id


def _image_config(info: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    rootfs = info.get("RootFS") or {}
    if rootfs.get("Type") != "layers" or not isinstance(rootfs.get("Layers"), list):
        raise ValueError(f"unexpected image root filesystem {rootfs.get('Type')!r}")
    diff_ids: list[str] = list(rootfs["Layers"])
    config: dict[str, Any] = {
        "architecture": info.get("Architecture") or "amd64",
        "os": info.get("Os") or "linux",
        "config": info.get("Config") or {},
        "created": info.get("Created"),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": _history(history, len(diff_ids)),
    }
    for key, field in (
        ("Variant", "variant"),
        ("OsVersion", "os.version"),
        ("Author", "author"),
        ("Comment", "comment"),
        ("DockerVersion", "docker_version"),
    ):
        if info.get(key):
            config[field] = info[key]
    return config


def _history(entries: list[dict[str, Any]], layer_count: int) -> list[dict[str, Any]]:
    """The image history, oldest first, from the engine's history listing (newest first).

    The listing does not say which entries made a layer; only entries with a non-zero size
    surely did. When those do not account for every layer (a layer of size 0, such as one
    that only deletes files) the history is left out rather than guessed: it is
    informational only, and a history naming more layers than exist makes the engine
    refuse the image.
    """
    oldest_first = list(reversed(entries))
    with_layer = [int(entry.get("Size") or 0) > 0 for entry in oldest_first]
    if sum(with_layer) != layer_count:
        log.debug("image history left out: its layers cannot be told apart")
        return []
    result: list[dict[str, Any]] = []
    for entry, has_layer in zip(oldest_first, with_layer, strict=True):
        created = datetime.fromtimestamp(int(entry.get("Created") or 0), UTC)
        item: dict[str, Any] = {
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_by": str(entry.get("CreatedBy") or ""),
        }
        if entry.get("Comment"):
            item["comment"] = str(entry["Comment"])
        if not has_layer:
            item["empty_layer"] = True
        result.append(item)
    return result


def _config_only_archive(config: bytes, digest: str, reference: str, layer_count: int) -> bytes:
    """A `docker load` archive with the image config and manifest, and no layer data.

    The engine takes a layer it already holds from its store without reading the archive's
    copy, so the layer paths only have to be distinct names.
    """
    manifest = [
        {
            "Config": f"{digest}.json",
            "RepoTags": [reference],
            "Layers": [f"layer-{index}/layer.tar" for index in range(layer_count)],
        }
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (
            (f"{digest}.json", config),
            ("manifest.json", json.dumps(manifest).encode("utf-8")),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
