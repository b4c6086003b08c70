"""The fake engine's image calls: commit, tag, inspect, list, remove, and import.

A commit records one more layer than its container's image and that image as its `Parent`;
removing an image that is another's `Parent` is refused with the engine's 409; an import
makes a one-layer image with no parent whose config is what its `changes` say.
"""

from __future__ import annotations

import json
from typing import Any

from ._fake_answers import FakeResponse, api_error, no_such_image
from ._fake_engine import FakeEngine

__all__ = ["FakeImageCalls"]


def _unquoted(word: str) -> str:
    """A double-quoted Dockerfile word read back (the form `_flatten` writes)."""
    if not word.startswith('"'):
        return word
    out, chars = [], iter(word[1:-1])
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def _apply_change(config: dict[str, Any], change: str) -> None:
    """One import `changes` instruction applied to an image config (the forms dockyard sends)."""
    instruction, _, rest = change.partition(" ")
    if instruction == "ENV":
        key, _, value = rest.partition("=")
        config["Env"].append(f"{key}={_unquoted(value)}")
    elif instruction == "LABEL":
        key, _, value = rest.partition("=")
        config["Labels"][_unquoted(key)] = _unquoted(value)
    elif instruction in ("CMD", "ENTRYPOINT"):
        config[instruction.title() if instruction == "CMD" else "Entrypoint"] = json.loads(rest)
    elif instruction in ("WORKDIR", "USER"):
        config["WorkingDir" if instruction == "WORKDIR" else "User"] = _unquoted(rest)
    else:
        raise api_error(400, f"{instruction.lower()} is not a valid change command")


class FakeImageCalls(FakeEngine):
    """The image calls of docker-py's `APIClient` on the fake engine's images."""

    def _import(self, changes: list[str], data: Any) -> Any:
        self._record("import", changes)
        for _ in data:  # read the body, as the engine does
            pass
        self._fail("import")
        config: dict[str, Any] = {"Env": [], "Labels": {}}
        for change in changes:
            _apply_change(config, change)
        image_id = "sha256:" + self._new_id()
        info = {
            "Id": image_id,
            "Parent": "",
            "Config": config,
            "RootFS": {"Type": "layers", "Layers": ["sha256:" + self._new_id()]},
            "Size": 2048,
        }
        with self.lock:
            self.image_info[image_id] = info
            self.image_names.add(image_id)
        return FakeResponse([{"status": image_id}])

    def commit(
        self, container: str, repository: str | None = None, tag: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        self._record("commit", container)
        self._fail("commit")
        source = self._find(container)
        env = source.env_map()
        labels = dict(source.labels)
        with self.lock:
            base = self.image_info.get(source.image) or {"Id": source.image}
        for change in kwargs.get("changes") or []:
            if str(change).startswith("LABEL "):
                key, _, value = str(change).removeprefix("LABEL ").partition("=")
                labels[json.loads(key)] = json.loads(value)
            else:
                key, _, value = str(change).removeprefix("ENV ").partition("=")
                env[key] = value
        image_id = "sha256:" + self._new_id()
        layers = list((base.get("RootFS") or {}).get("Layers") or ["sha256:base"])
        info: dict[str, Any] = {
            "Id": image_id,
            "Parent": base["Id"],
            "Config": {"Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels},
            "RootFS": {"Type": "layers", "Layers": [*layers, "sha256:" + self._new_id()]},
            "Size": 1024,
        }
        with self.lock:
            self.image_info[image_id] = info
            self.image_names.add(image_id)
            if repository:
                self.image_info[f"{repository}:{tag or 'latest'}"] = info
                self.image_names.add(f"{repository}:{tag or 'latest'}")
        return {"Id": image_id}

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        self._record("tag", (image, repository, tag))
        self._fail("tag")
        name = f"{repository}:{tag or 'latest'}"
        with self.lock:
            if image not in self.image_names:
                raise no_such_image(image)
            self.image_names.add(name)
            self.image_info[name] = self.image_info.get(image, {"Id": image})
        return True

    def inspect_image(self, image: str) -> dict[str, Any]:
        self._record("inspect_image", image)
        self._fail("inspect_image")
        with self.lock:
            if image not in self.image_names:
                raise no_such_image(image)
            info = dict(self.image_info.get(image, {"Id": image, "Config": {}}))
            if image in self.image_info:
                info["RepoTags"] = [
                    name for name, other in self.image_info.items()
                    if not name.startswith("sha256:") and other.get("Id") == info.get("Id")
                ]  # fmt: skip
            return info

    def images(self, all: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        self._record("images")
        with self.lock:
            return [
                {
                    "Id": info.get("Id", name),
                    "RepoTags": [name],
                    "Created": 0,
                    "Size": 0,
                    "Labels": (info.get("Config") or {}).get("Labels") or {},
                }
                for name, info in self.image_info.items()
                if not name.startswith("sha256:")
            ]

    def remove_image(self, image: str, force: bool = False) -> None:
        self._record("remove_image", image)
        self._fail("remove_image")
        with self.lock:
            image_id = self.image_info.get(image, {}).get("Id", image)
            names = [n for n, i in self.image_info.items() if i.get("Id") == image_id]
            tags = [n for n in names if not n.startswith("sha256:")]
            last = image.startswith("sha256:") or tags == [image]
            children = [
                n for n, i in self.image_info.items() if n.startswith("sha256:")
                and i.get("Parent") == image_id
            ]  # fmt: skip
            if last and children and not image.startswith("sha256:"):
                # The last name of a parent: the engine only untags it.
                self.image_names.discard(image)
                self.image_info.pop(image, None)
                return
            if last and children:
                raise api_error(
                    409,
                    f"conflict: unable to delete {image_id[7:19]} (cannot be forced) - image "
                    "has dependent child images",
                )
            self.image_names.discard(image)
            self.image_info.pop(image, None)
            if last:  # the image goes with its last name, as on the engine
                for name in names:
                    self.image_names.discard(name)
                    self.image_info.pop(name, None)

    def history(self, image: str) -> list[dict[str, Any]]:
        return []
