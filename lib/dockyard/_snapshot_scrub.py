"""What a snapshot commit blanks, and the checks of the committed image before it is named.

A snapshot must carry no secret. `docker commit` with `changes` of `ENV KEY=` blanks the
keys in the image's `Config` (a scrubbed `Env` in the commit body does not: the daemon
re-adds the missing keys), but engines that keep the legacy `container_config` (Docker
20.10 among them) also copy the container's full configuration, every environment value
included, into the image. Such an image is written again without it (see
`_image_rewrite.record_without_container_config`) and checked before it is registered; an
image that still carries a value is removed and nothing is registered.

A snapshot owns no worker: Docker copies an image's labels into every container made from
it, so the commit blanks every worker label (`managed`, `router.instance`, `job.id`,
`deadline`, ...) and records the pair, the instance and the base image under snapshot
labels of their own.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._naming import LabelSchema

__all__ = [
    "SCRUBBED_ENV_KEYS",
    "blanked_keys",
    "credential_keys",
    "env_pairs",
    "env_values_left",
    "label_changes",
    "scrub_changes",
    "worker_labels_left",
]

# Blanked in every snapshot image (plus every name listed in CASCADE_CREDENTIAL_KEYS).
SCRUBBED_ENV_KEYS = (
    "JOB_DATA",
    "JOB_DATA_REDIS_KEY",
    "JOB_ID",
    "JOB_TYPE",
    "DATABASE_URL",
    "DATABASE_SSL",
    "DATABASE_CA_CERT",
    "REDIS_URL",
    "CREDENTIAL_MASTER_KEY",
    "CASCADE_CREDENTIAL_KEYS",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CASCADE_POSTGRES_HOST",
    "CASCADE_POSTGRES_PORT",
    "CASCADE_SNAPSHOT_REUSE",
    "CASCADE_SNAPSHOT_ENABLED",
)
# Blanked beyond the spec's deny-list: the router's Sentry DSN is a credential too.
EXTRA_SCRUBBED_KEYS = ("SENTRY_DSN",)


def label_changes(labels: LabelSchema, snapshot: Mapping[str, str]) -> list[str]:
    """Commit `changes` that blank every worker label and set the snapshot labels.

    An empty value is the only way to drop an inherited label in a commit; it never matches
    the `managed=true` / `router.instance=<id>` filters that reaping and adoption use.
    """
    worker_keys = (
        labels.managed,
        labels.instance,
        labels.job_id,
        labels.job_type,
        labels.deadline,
        labels.project_id,
        labels.work_item_id,
        labels.agent_type,
        labels.snapshot_enabled,
        labels.base_image,
    )
    pairs = [(key, "") for key in worker_keys] + list(snapshot.items())
    return [f"LABEL {json.dumps(key)}={json.dumps(value)}" for key, value in pairs]


def blanked_keys(env_keys: Iterable[str], credential_keys: Iterable[str]) -> list[str]:
    """The deny-listed and credential keys among `env_keys`, deny-list order first."""
    present = set(env_keys)
    deny = [*SCRUBBED_ENV_KEYS, *EXTRA_SCRUBBED_KEYS, *credential_keys]
    return list(dict.fromkeys(key for key in deny if key in present))


def scrub_changes(env_keys: Iterable[str], credential_keys: Iterable[str]) -> list[str]:
    """Docker `changes` blanking every deny-listed and credential key among `env_keys`.

    A scrubbed `Env` in the commit body does not work (the daemon re-adds missing keys);
    `ENV KEY=` blanks the value and keeps Cmd, Entrypoint and the rest.
    """
    return [f"ENV {key}=" for key in blanked_keys(env_keys, credential_keys)]


def env_pairs(env: Iterable[str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in env)
    return {key: value for key, _, value in pairs}


def credential_keys(env: Mapping[str, str]) -> list[str]:
    listed = env.get("CASCADE_CREDENTIAL_KEYS", "")
    return [key.strip() for key in listed.split(",") if key.strip()]


def env_values_left(info: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The keys among `keys` that still have a value anywhere in an inspected image."""
    wanted = set(keys)
    left: set[str] = set()
    for section in ("Config", "ContainerConfig"):
        for item in (info.get(section) or {}).get("Env") or []:
            key, _, value = str(item).partition("=")
            if key in wanted and value:
                left.add(key)
    return sorted(left)


def worker_labels_left(labels: LabelSchema, info: Mapping[str, Any]) -> list[str]:
    """Ownership labels that still have a value anywhere in an inspected image (the
    legacy `container_config` keeps the container's labels, as it keeps its env)."""
    owning = (labels.managed, labels.instance, labels.job_id)
    left: set[str] = set()
    for section in ("Config", "ContainerConfig"):
        found = (info.get(section) or {}).get("Labels") or {}
        left.update(key for key in owning if found.get(key))
    return sorted(left)
