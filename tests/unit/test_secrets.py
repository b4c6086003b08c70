"""The secret type and the masker (no engine): what shows, what is hidden, in which forms."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sentry_sdk
from sentry_sdk.serializer import serialize

from dockyard import WorkerJob
from dockyard._driver import ContainerSpec
from dockyard._environment import worker_masker
from dockyard._jobs import resolve_job_fields
from dockyard._secrets import Masker, Secret, SecretBook, SecretEnv, router_secret_values
from dockyard._sentry import SentryReporter, scrub_event, scrub_for_host
from dockyard.worker_container_launcher import WorkerContainerLaunchConfig
from support.sentry import CapturedEvents

VALUE = 'p@ss/w+rd "q" ü'


def test_secret_never_shows_its_value() -> None:
    secret = Secret(VALUE)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % (secret,)):  # noqa: UP031
        assert VALUE not in shown and "***" in shown
    assert secret.reveal() == VALUE
    with pytest.raises(AttributeError):
        secret._value = "other"  # type: ignore[misc]


def test_sentry_serialises_secrets_and_secret_envs_without_values() -> None:
    env = SecretEnv({"DATABASE_URL": VALUE, "JOB_ID": "j"})
    frame_vars = {"env": env, "secret": Secret(VALUE), "listed": [Secret(VALUE)]}
    text = json.dumps(serialize({"extra": frame_vars}), ensure_ascii=False)
    assert VALUE not in text and json.dumps(VALUE)[1:-1] not in text
    assert env.reveal() == {"DATABASE_URL": VALUE, "JOB_ID": "j"}
    assert "DATABASE_URL" in repr(env) and VALUE not in repr(env)


def test_reprs_of_what_carries_secrets_hide_them() -> None:
    job = WorkerJob("j", "t", {"token": VALUE})
    fields = resolve_job_fields(job, None)
    env = SecretEnv({"API_TOKEN": VALUE})
    spec = ContainerSpec(
        image="i", name="n", env=env, labels={}, memory_bytes=1, network="none", auto_remove=True
    )
    launch = WorkerContainerLaunchConfig(
        name="n",
        base_image="i",
        env={"API_TOKEN": VALUE},
        labels={},
        memory_mb=64,
        network="none",
        auto_remove=True,
        timeout_s=1.0,
        masker=Masker.of([VALUE]),
    )
    for shown in (repr(job), repr(fields), repr(spec), repr(launch)):
        assert VALUE not in shown and "p@ss" not in shown


@pytest.mark.parametrize(
    "form",
    [
        VALUE,
        quote(VALUE, safe=""),
        quote(VALUE),
        quote_plus(VALUE),
        json.dumps(VALUE)[1:-1],
        json.dumps(VALUE, ensure_ascii=False)[1:-1],
    ],
    ids=["plain", "quote", "quote-path", "quote_plus", "json", "json-unicode"],
)
def test_masker_hides_every_encoded_form(form: str) -> None:
    masker = Masker.of([VALUE])
    assert masker.mask(f"before {form} after") == "before *** after"


def test_short_values_are_masked_only_as_whole_tokens() -> None:
    masker = Masker.of(["ab", "7"])
    assert masker.mask("ab tab abc 7 17 x=7 ab.") == "*** tab abc *** 17 x=*** ***."


def test_worker_masker_covers_job_data_but_not_plain_settings_or_ids() -> None:
    data = {"projectId": "project-long-1", "workItemId": "card-long-1", "note": "a payload secret"}
    fields = resolve_job_fields(WorkerJob("job-long-id", "trello", data), None)
    env = SecretEnv(
        {"JOB_ID": "job-long-id", "JOB_DATA": fields.job_data_json, "LOG_LEVEL": "info"}
    )
    masker = worker_masker(env, fields)
    text = f"{fields.job_data_json} | a payload secret | project-long-1 card-long-1 info"
    assert masker.mask(text) == "*** | *** | project-long-1 card-long-1 info"


def test_router_secrets_are_named_like_secrets() -> None:
    environ = {
        "DATABASE_URL": "postgres://u:pw@db/x",
        "CREDENTIAL_MASTER_KEY": "mk-1234",
        "AWS_SECRET_ACCESS_KEY": "aws-1234-long",
        "HOME": "/root",
        "LOG_LEVEL": "info",
        "SOME_TOKEN_TTL": "1",  # named like a secret, but a flag: masking it garbles events
    }
    found = set(router_secret_values(environ))
    assert found == {"postgres://u:pw@db/x", "mk-1234", "aws-1234-long"}


def _event_with_vars(value: str) -> dict[str, Any]:
    return {
        "message": f"failed with {value}",
        "exception": {
            "values": [
                {"stacktrace": {"frames": [{"function": "f", "vars": {"env": value}}]}},
            ]
        },
        "breadcrumbs": {"values": [{"message": quote_plus(value)}]},
    }


def test_scrub_event_drops_frame_vars_and_masks_values() -> None:
    event = scrub_event(_event_with_vars(VALUE), Masker.of([VALUE]))
    frame = event["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert "vars" not in frame and frame["function"] == "f"
    assert event["message"] == "failed with ***"
    assert event["breadcrumbs"]["values"][0]["message"] == "***"


def test_scrub_for_host_cuts_every_traceback_in_the_chain() -> None:
    def inner() -> None:
        env = {"TOKEN": VALUE}  # noqa: F841 - a local the traceback would carry
        raise KeyError("engine")

    try:
        try:
            inner()
        except KeyError as cause:
            raise RuntimeError("spawn failed") from cause
    except RuntimeError as err:
        outer = err
    assert outer.__cause__ is not None and outer.__cause__.__traceback__ is not None
    assert scrub_for_host(outer) is outer
    assert outer.__traceback__ is None
    assert outer.__cause__.__traceback__ is None


def test_reporter_masks_known_values_and_leaves_the_host_scope_alone(
    sentry_events: CapturedEvents,
) -> None:
    # Built at run time: the event's source context shows this test's own lines.
    router_value, job_value = (f"{kind}-{uuid.uuid4().hex}" for kind in ("router", "job"))
    book = SecretBook(Masker.of([router_value]))
    book.hold("job-1", Masker.of([job_value]))
    processors_before = list(sentry_sdk.get_current_scope()._event_processors)
    env = {"A": router_value}  # noqa: F841 - a local of the reported frame

    try:
        raise RuntimeError(f"{job_value} and {router_value}")
    except RuntimeError as err:
        SentryReporter(book).report(err, "unit", extras={"jobId": "job-1"})
    (event,) = sentry_events
    text = json.dumps(event)
    assert router_value not in text and job_value not in text
    assert event["exception"]["values"][0]["value"] == "*** and ***"
    assert event["tags"]["source"] == "unit" and event["extra"]["jobId"] == "job-1"
    assert list(sentry_sdk.get_current_scope()._event_processors) == processors_before
