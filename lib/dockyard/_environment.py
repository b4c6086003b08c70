"""The worker's environment: what a container is given (`build_worker_env`).

Job data, service URLs, credentials and pass-throughs, every value a `Secret` (`_secrets`)
until the create call; a payload too large for the environment goes to the job data
store (`_job_data`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ._errors import InvalidJobError
from ._job_data import JobDataStore, check_job_data_size, job_data_env
from ._secrets import Masker, Secret, SecretEnv, job_data_secrets, reveal, worker_secret_values
from ._snapshot_scrub import SCRUBBED_ENV_KEYS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._config import RouterConfig
    from ._jobs import JobFields
    from ._sentry import Reporter

__all__ = [
    "CredentialProvider",
    "build_worker_env",
    "check_job_data",
    "worker_masker",
]


log = logging.getLogger("dockyard.environment")

# Copied from the router's environment only when set there.
PASS_THROUGH_KEYS = (
    "DATABASE_SSL",
    "DATABASE_CA_CERT",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "SENTRY_RELEASE",
    "CASCADE_DASHBOARD_URL",
)
# Router variables with a default when the router does not set them.
DEFAULTED_KEYS = (
    ("CASCADE_POSTGRES_HOST", "postgres"),
    ("CASCADE_POSTGRES_PORT", "5432"),
    ("DATABASE_URL", ""),
    ("LOG_LEVEL", "info"),
)
NEVER_PASSED = frozenset({"CREDENTIAL_MASTER_KEY"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CredentialProvider(Protocol):
    """The host's credential lookup (`credentials=` of `ContainerManager`)."""

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        """The project's credentials, passed to its workers as environment variables."""
        ...


@dataclass(frozen=True)
class EnvSources:
    """What an environment is built from besides the job itself."""

    config: RouterConfig
    router_environ: Mapping[str, str] = field(repr=False)  # the router's secrets among them
    credentials: CredentialProvider | None
    job_data_store: JobDataStore | None
    reporter: Reporter


def build_worker_env(
    fields: JobFields, sources: EnvSources, *, snapshot_enabled: bool
) -> SecretEnv:
    """The environment of a fresh (not reused) worker; raises `InvalidJobError` on bad input.

    Every value is a `Secret` from here to the create call. Large payloads are written to
    the job data store last, once every check has passed (a refused job leaves no key
    behind), so call it once per spawn.
    """
    env: dict[str, str | Secret] = {"JOB_ID": fields.job_id, "JOB_TYPE": fields.job_type}
    env["REDIS_URL"] = sources.config.redis_url
    for key, default in DEFAULTED_KEYS:
        env[key] = Secret(sources.router_environ.get(key, default))
    if snapshot_enabled:
        env["CASCADE_SNAPSHOT_ENABLED"] = "true"
    env.update(_credentials(fields, sources))
    for key in PASS_THROUGH_KEYS:
        passed = sources.router_environ.get(key)
        if passed is not None:
            env[key] = Secret(passed)
    for key in NEVER_PASSED:
        env.pop(key, None)
    for key, value in env.items():
        if "\x00" in reveal(value):
            raise InvalidJobError(f"environment value of {key} contains a NUL character")
    # json.dumps escapes NUL: the payload needs no such check. Written last: a refused job
    # leaves no key behind.
    env.update(job_data_env(fields, sources.job_data_store, sources.reporter))
    return SecretEnv(env)


def worker_masker(env: Mapping[str, str | Secret], fields: JobFields | None = None) -> Masker:
    """What a worker's output must not show: its secret env values and its job data."""
    job_data: list[str] = []
    if fields is not None:
        public = (fields.job_id, fields.project_id, fields.work_item_id, fields.agent_type)
        job_data = job_data_secrets(fields.job.data, fields.job_data_json, public)
    return Masker.of(worker_secret_values(env), job_data)


def check_job_data(fields: JobFields, sources: EnvSources) -> None:
    """Refuse a payload too large for the environment when there is no store to take it.

    Cheap and free of side effects, so a spawn calls it before waiting for a slot.
    """
    check_job_data_size(fields, sources.job_data_store)


def router_environ() -> dict[str, str]:
    """The router's own environment, read when a manager is created."""
    return dict(os.environ)


def _credentials(fields: JobFields, sources: EnvSources) -> dict[str, str | Secret]:
    if sources.credentials is None or fields.project_id is None:
        return {}
    try:
        raw = dict(sources.credentials.get_project_credentials(fields.project_id))
    except Exception as err:  # a host hook: any failure
        # Without credentials the worker can still run (and report its own failure).
        log.warning(
            "credential resolution failed; starting without credentials",
            extra={"job_id": fields.job_id, "project_id": fields.project_id},
        )
        sources.reporter.report(
            err,
            "credential_resolution",
            level="warning",
            tags={"jobType": fields.job_type},
            extras={"jobId": fields.job_id, "projectId": fields.project_id},
        )
        return {}
    accepted: dict[str, str | Secret] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            log.warning(
                "skipping a credential with an invalid name", extra={"job_id": fields.job_id}
            )
            continue
        if key in NEVER_PASSED or key in SCRUBBED_ENV_KEYS:
            log.warning(
                "skipping a credential that would shadow a reserved variable",
                extra={"job_id": fields.job_id, "credential_key": key},
            )
            continue
        if not isinstance(value, str):
            raise InvalidJobError(
                f"credential {key} of project {fields.project_id} is not a string"
            )
        accepted[key] = Secret(value)
    if not accepted:
        return {}
    return {**accepted, "CASCADE_CREDENTIAL_KEYS": ",".join(accepted)}
