"""The gateway's image calls: commit, tag, inspect, list, load, import, remove and pull.

A mixin of `DockerGateway` (as docker-py's `APIClient` is made of per-resource mixins): it
uses the gateway's one choke point, `_run`, so its errors are translated like every other
engine call. Pulls and loads read the engine's progress stream and raise on its error lines.

Answers are read back in one form whatever the engine: image ids with their `sha256:`
(Podman leaves it off in places) and names as the Docker CLI writes them (`familiar`:
Podman answers `docker.io/library/NAME:TAG` and `localhost/NAME:TAG`).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, TypeVar

from docker.errors import APIError

from ._errors import DockyardError, copy_error
from ._exit_monitor import decode_event
from ._naming import familiar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import docker
    import requests

    from ._registry_auth import RegistryAuth

__all__ = ["ImageCalls", "full_image_id"]

T = TypeVar("T")
_EXPORT_CHUNK_BYTES = 1024 * 1024
_BARE_ID = re.compile(r"[0-9a-f]{64}")


def full_image_id(value: str) -> str:
    """An image id with its `sha256:`, as Docker writes it (Podman may leave it off)."""
    return f"sha256:{value}" if _BARE_ID.fullmatch(value) else value


def _read_back(image: dict[str, Any]) -> dict[str, Any]:
    """An image inspect or listing entry with its ids and names in one form."""
    for key in ("Id", "Parent", "ParentId"):
        if isinstance(image.get(key), str):
            image[key] = full_image_id(image[key])
    if isinstance(image.get("RepoTags"), list):
        image["RepoTags"] = [familiar(str(tag)) for tag in image["RepoTags"]]
    return image


class ImageCalls:
    """Image calls over the gateway's client, each run through the gateway's `_run`."""

    api: docker.APIClient
    image_write_timeout_s: float

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _endpoint(self, path: str) -> str:
        raise NotImplementedError

    def _check(self, response: requests.Response) -> None:
        raise NotImplementedError

    def commit(self, container_id: str, repository: str, tag: str, changes: Sequence[str]) -> str:
        """`docker commit` with the long image-write timeout (docker-py's has none of its own)."""
        params = {
            "container": container_id,
            "repo": repository or None,
            "tag": tag or None,
            "changes": list(changes) or None,
            "pause": True,
        }

        def commit() -> str:
            response = self.api.post(
                self._endpoint("/commit"),
                params=params,
                json={},
                timeout=self.image_write_timeout_s,
            )
            self._check(response)
            return full_image_id(str(response.json()["Id"]))

        return self._run("commit", commit)

    def tag(self, image: str, repository: str, tag: str, *, force: bool = True) -> None:
        """Give `image` the name `repository:tag` (moving the name when `force`).

        Repository and tag always go apart: Podman refuses `repo=NAME:TAG` without `tag`.
        """
        if not tag:
            repository, split = _split_reference(repository)
            tag = split or "latest"
        self._run("tag", lambda: self.api.tag(image, repository, tag, force=force))

    def image_inspect(self, image: str) -> dict[str, Any]:
        raw: Any = self.api  # untyped in the stubs
        result: dict[str, Any] = self._run("image_inspect", lambda: raw.inspect_image(image))
        return _read_back(result)

    def list_images(self, name_filter: str | None = None) -> list[dict[str, Any]]:
        """The tagged images, their names familiar; with `name_filter`, those with a name
        starting so."""
        answer: list[dict[str, Any]] = self._run("list_images", lambda: self.api.images(all=False))
        result = [_read_back(image) for image in answer]
        if name_filter is None:
            return result
        prefix = familiar(name_filter)
        return [
            image
            for image in result
            if any(tag.startswith(prefix) for tag in image.get("RepoTags") or [])
        ]

    def dangling_images(self, labels: Sequence[str]) -> list[dict[str, Any]]:
        """Untagged images carrying every label in `labels` (the engine ANDs the filters)."""
        filters = {"dangling": True, "label": list(labels)}
        raw: Any = self.api  # untyped in the stubs
        answer: list[dict[str, Any]] = self._run("list_images", lambda: raw.images(filters=filters))
        return [_read_back(image) for image in answer]

    def image_history(self, image: str) -> list[dict[str, Any]]:
        raw: Any = self.api  # untyped in the stubs
        return list(self._run("image_history", lambda: raw.history(image)))

    def load_image_archive(self, archive: bytes, reference: str) -> None:
        """`docker load` an image archive, raising on the stream's own error lines."""
        self._run(
            "load_image_archive",
            lambda: self._drain(
                f"load of {reference}",
                "/images/load",
                self.image_write_timeout_s,
                data=archive,
                params={"quiet": "1"},
            ),
        )

    def import_container_filesystem(self, container_id: str, changes: Sequence[str]) -> str:
        """A new, untagged one-layer image holding the container's whole filesystem.

        `docker export` of the container streamed into `docker import` (`POST
        /images/create?fromSrc=-`), never held in memory whole. The import starts from an
        empty config: `changes` (Dockerfile instructions: ENV, CMD, ENTRYPOINT, WORKDIR,
        USER, LABEL, EXPOSE, VOLUME, HEALTHCHECK, ONBUILD; the engine refuses the others)
        make all of it. The image has no parent. Returns its id.
        """
        timeout = self.image_write_timeout_s

        def flatten() -> str:
            export = self.api.get(
                self._endpoint(f"/containers/{container_id}/export"), stream=True, timeout=timeout
            )
            try:
                self._check(export)
                response = self.api.post(
                    self._endpoint("/images/create"),
                    params={"fromSrc": "-", "changes": list(changes)},
                    data=export.iter_content(_EXPORT_CHUNK_BYTES),
                    headers={"Content-Type": "application/x-tar"},
                    stream=True,
                    timeout=timeout,
                )
            finally:
                export.close()
            return self._imported_id(f"import of {container_id}'s filesystem", response)

        return self._run("import_container_filesystem", flatten)

    def _imported_id(self, what: str, response: requests.Response) -> str:
        """The image id an import's progress stream ends with; raises on its error lines."""
        image_id = None
        try:
            self._check(response)
            for line in _progress(what, response):
                # Docker ends with `{"status": "sha256:…"}`; Podman answers the id bare.
                for key in ("status", "id"):
                    value = full_image_id(str(line.get(key) or ""))
                    if value.startswith("sha256:"):
                        image_id = value
        finally:
            response.close()
        if image_id is None:
            raise APIError(f"{what} failed: no image id in the answer")
        return image_id

    def remove_image(self, image: str) -> None:
        self._run("remove_image", lambda: self.api.remove_image(image, force=False))

    def pull(self, image: str, timeout_s: float, auth_config: RegistryAuth | None = None) -> None:
        """Pull an image within `timeout_s`, raising on the stream's own error lines.

        docker-py's `pull` has no timeout and does not raise on `{"error": ...}` lines.
        `auth_config` goes to the engine as `X-Registry-Auth`. With it, a failure is
        raised again as a fresh error without the frames and request that held the
        encoded credentials (Sentry sends frame locals).
        """
        repository, tag = _split_reference(image)
        params = {"fromImage": repository, "tag": tag}
        try:
            # The encoded header lives only in the frames that `from None` below drops.
            self._run(
                "pull",
                lambda: self._drain(
                    f"pull of {image}",
                    "/images/create",
                    timeout_s,
                    params=params,
                    headers={"X-Registry-Auth": auth_config.header()} if auth_config else None,
                ),
            )
        except DockyardError as err:
            if auth_config is None:
                raise
            what = f"pull of {image} failed"
            detail = getattr(err, "explanation", None) or str(err)
            message = detail if str(detail).startswith(what) else f"{what}: {detail}"
            raise copy_error(err, message=message) from None

    def _drain(self, what: str, path: str, timeout_s: float, **request: Any) -> None:
        """POST `path` and read its JSON progress lines within `timeout_s`, raising on their
        error lines (docker-py's own `pull`/`load_image` hide those)."""
        deadline = time.monotonic() + timeout_s
        response = self.api.post(self._endpoint(path), stream=True, timeout=timeout_s, **request)
        try:
            self._check(response)
            for _line in _progress(what, response):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} exceeded {timeout_s:g}s")
        finally:
            response.close()


def _split_reference(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _progress(what: str, response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON progress lines of a streamed image call; raises on the engine's error lines
    (which docker-py's own `pull`/`load_image`/`import_image` pass over in silence)."""
    for raw_line in response.iter_lines():
        line = decode_event(raw_line)
        if line is None:
            continue
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail") or {}
            message = line.get("error") or detail.get("message")
            raise APIError(f"{what} failed: {message}", explanation=str(message))
        yield line
