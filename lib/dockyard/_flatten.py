"""Flattened snapshots: one layer holding a container's whole filesystem, same config.

Each run of a work item commits one more layer on top of the previous snapshot, and the
storage driver refuses a commit past its layer limit (overlay2: about 125). Before a
snapshot would pass `RouterConfig.snapshot_max_layers`, it is written flattened instead:
the finished container's filesystem is exported and imported as a new image of one layer
(`ImageCalls.import_container_filesystem`), with no parent and no legacy container config.

The import starts from an empty config, so the config of the commit it replaces (the
scrubbed env, Cmd, Entrypoint, WorkingDir, User, labels, ...) is written again as
Dockerfile `changes`, and the result is compared with it field by field: a flattened
snapshot that would differ from the commit (a value the changes cannot express, such as an
environment value with a line break, or an instruction the engine's import refuses, such as
STOPSIGNAL or SHELL on Docker 20.10) is refused with `FlattenError`, never kept.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._driver import ImageStore

__all__ = ["FlattenError", "differences", "flatten", "import_changes", "layer_count"]

# The config fields a snapshot keeps through a flatten (the rest are a container's own:
# Hostname, Tty, AttachStdout, ...). Each is written again by an instruction below.
CARRIED_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "Healthcheck",
    "OnBuild",
    "StopSignal",
    "Shell",
)
_HEALTHCHECK_OPTIONS = (
    ("Interval", "interval"),
    ("Timeout", "timeout"),
    ("StartPeriod", "start-period"),
    ("StartInterval", "start-interval"),
)


class FlattenError(RuntimeError):
    """A snapshot could not be written flattened with the same config as its commit."""


def layer_count(info: Mapping[str, Any]) -> int:
    """How many layers an inspected image has (`RootFS.Layers`)."""
    layers = (info.get("RootFS") or {}).get("Layers")
    return len(layers) if isinstance(layers, list) else 0


def _quoted(value: str) -> str:
    """A Dockerfile double-quoted word that reads back as `value` (no `$` expansion)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


# A word every engine reads back as itself without quotes: Docker would expand `$`, take
# quotes and backslashes away and split at whitespace; Podman keeps quotes.
_PLAIN_WORD = re.compile(r"[^\s\"'\\$]+")


def _word(value: str) -> str:
    """`value` bare when it is a plain word, else double-quoted.

    Podman's import takes WORKDIR and USER literally (quotes and all); Docker unquotes
    them. A plain word reads back the same on both; any other value is quoted, which
    Docker reads back and Podman does not (the flattened image then differs from the
    commit and is refused).
    """
    return value if _PLAIN_WORD.fullmatch(value) else _quoted(value)


def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\x00" in value:
        # The changes are read line by line: a line break cannot be written into one.
        raise FlattenError(f"{what} holds a line break, which an image import cannot carry")
    return value


def import_changes(config: Mapping[str, Any]) -> list[str]:
    """Dockerfile `changes` that give an imported image the `Config` of `config`.

    Raises `FlattenError` when a value cannot be written as a change. Messages name
    fields and keys, never a value.
    """
    changes: list[str] = []
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        changes.append(f"ENV {key}={_quoted(_one_line(f'the value of env {key}', value))}")
    for field, instruction in (("Entrypoint", "ENTRYPOINT"), ("Cmd", "CMD")):
        if config.get(field) is not None:
            changes.append(f"{instruction} {json.dumps(config[field])}")
    if config.get("WorkingDir"):
        changes.append(f"WORKDIR {_word(_one_line('WorkingDir', str(config['WorkingDir'])))}")
    if config.get("User"):
        changes.append(f"USER {_word(_one_line('User', str(config['User'])))}")
    for key, value in (config.get("Labels") or {}).items():
        label = _one_line(f"the value of label {key}", str(value))
        changes.append(f"LABEL {_quoted(_one_line('a label name', key))}={_quoted(label)}")
    changes += [f"EXPOSE {port}" for port in config.get("ExposedPorts") or {}]
    if config.get("Volumes"):
        changes.append(f"VOLUME {json.dumps(sorted(config['Volumes']))}")
    if config.get("Healthcheck"):
        changes.append(_healthcheck(config["Healthcheck"]))
    onbuild = config.get("OnBuild") or []
    changes += [f"ONBUILD {_one_line('OnBuild', str(item))}" for item in onbuild]
    if config.get("StopSignal"):
        changes.append(f"STOPSIGNAL {_one_line('StopSignal', str(config['StopSignal']))}")
    if config.get("Shell"):
        changes.append(f"SHELL {json.dumps(config['Shell'])}")
    return changes


def _healthcheck(check: Mapping[str, Any]) -> str:
    test = list(check.get("Test") or [])
    if test == ["NONE"]:
        return "HEALTHCHECK NONE"
    options = [
        f"--{option}={int(check[field])}ns"
        for field, option in _HEALTHCHECK_OPTIONS
        if check.get(field)
    ]
    if check.get("Retries"):
        options.append(f"--retries={int(check['Retries'])}")
    if len(test) >= 2 and test[0] == "CMD":
        command = json.dumps(test[1:])
    elif len(test) == 2 and test[0] == "CMD-SHELL":
        command = _one_line("the health check", str(test[1]))
    else:
        raise FlattenError("the health check has a form an image import cannot carry")
    return " ".join(["HEALTHCHECK", *options, "CMD", command])


def _normal(field: str, value: Any) -> Any:
    """A config field as compared: empty and absent alike, env as a mapping."""
    if not value:
        return None
    if field == "Env":
        return dict(str(item).partition("=")[::2] for item in value)
    return value


def differences(wanted: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """The carried config fields in which `got` differs from `wanted`."""
    return [
        field
        for field in CARRIED_FIELDS
        if _normal(field, wanted.get(field)) != _normal(field, got.get(field))
    ]


def flatten(
    images: ImageStore, container_id: str, committed: Mapping[str, Any]
) -> tuple[str, dict[str, Any], float]:
    """Write the container's filesystem as a new one-layer image with `committed`'s config.

    `committed` is the inspect data of the (checked, scrubbed) commit of the same container.
    Returns the new image's id, its inspect data and the seconds it took. The image is
    untagged; on any failure it is removed again and the error raised.
    """
    started = time.monotonic()
    config = committed.get("Config") or {}
    image_id = images.import_container_filesystem(container_id, import_changes(config))
    try:
        info = images.image_inspect(image_id)
        differ = differences(config, info.get("Config") or {})
        if differ:
            raise FlattenError(f"the flattened image's {', '.join(differ)} differ from the commit")
        if layer_count(info) != 1:
            raise FlattenError(f"the flattened image has {layer_count(info)} layers, not 1")
    except BaseException:
        with contextlib.suppress(Exception):
            images.remove_image(image_id)
        raise
    return image_id, info, time.monotonic() - started
