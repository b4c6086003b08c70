"""Image re-recording: write a committed snapshot again without the legacy container config.

On engines that keep the legacy `container_config` (Docker 20.10 does), `docker commit`
copies the *container's* whole configuration into the image, with every environment value
the worker was started with, whatever the commit's `changes` say; only `Config` honours
`changes`. `record_without_container_config` writes the image again from its inspected
`Config`, layers and history, through `docker load` of an archive holding just the new image
config: the engine already has every layer, so nothing is copied, the layers stay shared,
and the new image has neither `container_config` nor a parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._driver import ImageStore

__all__ = ["record_without_container_config"]

log = logging.getLogger("dockyard.snapshots")


def record_without_container_config(images: ImageStore, image_id: str, reference: str) -> str:
    """Write `image_id` again as `reference`, keeping its `Config`, layers and history.

    Returns the new image id. The old image is left in place (the caller removes it) and
    `reference` now names the new one.
    """
    info = images.image_inspect(image_id)
    history = images.image_history(image_id)
    config = _image_config(info, history)
    body = json.dumps(config, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    archive = _config_only_archive(body, digest, reference, len(config["rootfs"]["diff_ids"]))
    images.load_image_archive(archive, reference)
    new_id = f"sha256:{digest}"
    named = images.image_inspect(reference).get("Id")
    if named != new_id:
        with contextlib.suppress(Exception):
            images.remove_image(new_id)
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
