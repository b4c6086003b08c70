"""Jobs and the worker environment (spec §7): field resolution, env contents, offload."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from dockyard import InvalidJobError, ProjectConfig, RouterConfig, WorkerJob
from dockyard._environment import EnvSources, check_job_data, worker_masker
from dockyard._environment import build_worker_env as build_secret_env
from dockyard._job_data import JOB_DATA_INLINE_LIMIT
from dockyard._jobs import JobFields, generated_job_id, resolve_job_fields
from dockyard._naming import MAX_NAME_LENGTH, LabelSchema, container_name
from dockyard._sentry import Reporter
from dockyard.worker_container_launcher import with_snapshot_reuse as with_secret_reuse

PASS_THROUGH = {
    "DATABASE_SSL": "true",
    "DATABASE_CA_CERT": "-----BEGIN CERTIFICATE-----",
    "CLAUDE_CODE_OAUTH_TOKEN": "oauth-token-value",
    "SENTRY_DSN": "https://key@sentry.example/1",
    "SENTRY_ENVIRONMENT": "staging",
    "SENTRY_RELEASE": "r-42",
    "CASCADE_DASHBOARD_URL": "https://dash.example",
}


def build_worker_env(fields: JobFields, sources: EnvSources, **kwargs: Any) -> dict[str, str]:
    """The environment with its values revealed (they travel as `Secret`s)."""
    return build_secret_env(fields, sources, **kwargs).reveal()


def with_snapshot_reuse(env: Mapping[str, str]) -> dict[str, str]:
    return with_secret_reuse(env).reveal()


class Projects:
    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)
        self.repo_lookups: list[str] = []

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        self.repo_lookups.append(repo_full_name)
        return next((p for p in self.projects if p.repo_full_name == repo_full_name), None)


class RecordingReporter(Reporter):
    def __init__(self) -> None:
        self.reports: list[tuple[BaseException, str, str, dict[str, Any], dict[str, Any]]] = []

    def report(
        self,
        err: BaseException,
        source: str,
        *,
        level: Any = "error",
        tags: Mapping[str, str] | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        self.reports.append((err, source, level, dict(tags or {}), dict(extras or {})))


class Credentials:
    def __init__(self, values: Mapping[str, Any] | Exception) -> None:
        self.values = values
        self.calls: list[str] = []

    def get_project_credentials(self, project_id: str) -> Mapping[str, str]:
        self.calls.append(project_id)
        if isinstance(self.values, Exception):
            raise self.values
        return dict(self.values)


class Store:
    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes]] = []

    def put(self, job_id: str, payload: bytes) -> str:
        self.puts.append((job_id, payload))
        return f"job-data:{job_id}"


def fields_of(job: WorkerJob, projects: Projects | None = None) -> JobFields:
    return resolve_job_fields(job, projects)


def sources(
    *,
    environ: Mapping[str, str] | None = None,
    credentials: Credentials | None = None,
    store: Store | None = None,
    reporter: Reporter | None = None,
    **config: Any,
) -> EnvSources:
    return EnvSources(
        config=RouterConfig(router_instance_id="r", **config),
        router_environ=dict(environ or {}),
        credentials=credentials,
        job_data_store=store,
        reporter=reporter or RecordingReporter(),
    )


# --------------------------------------------------------------------------- fields


def test_trello_work_item_is_the_work_item_id() -> None:
    data = {"projectId": "p-1", "workItemId": "c-9", "cardId": "not-this-one"}
    fields = fields_of(WorkerJob("j", "trello", data))
    assert (fields.project_id, fields.work_item_id, fields.agent_type) == ("p-1", "c-9", None)


def test_jira_work_item_is_the_issue_key() -> None:
    data = {"projectId": "p-2", "issueKey": "MNG-1", "cardId": "not-this-one"}
    fields = fields_of(WorkerJob("j", "jira", data))
    assert fields.work_item_id == "MNG-1"


def test_github_job_resolves_project_by_repo_and_trigger_result() -> None:
    projects = Projects(ProjectConfig("gh-project", repo_full_name="acme/app"))
    data = {
        "repoFullName": "acme/app",
        "triggerResult": {"workItemId": "PR-7", "agentType": "reviewer"},
        "agentType": "not-this-one",
    }
    fields = fields_of(WorkerJob("j", "github", data), projects)
    assert fields.project_id == "gh-project"
    assert fields.work_item_id == "PR-7"
    assert fields.agent_type == "reviewer"
    assert projects.repo_lookups == ["acme/app"]


def test_github_job_with_unknown_repo_has_no_project() -> None:
    projects = Projects(ProjectConfig("gh-project", repo_full_name="acme/app"))
    fields = fields_of(WorkerJob("j", "github", {"repoFullName": "acme/other"}), projects)
    assert fields.project_id is None


def test_only_github_jobs_look_up_repositories() -> None:
    projects = Projects(ProjectConfig("gh-project", repo_full_name="acme/app"))
    fields = fields_of(WorkerJob("j", "trello", {"repoFullName": "acme/app"}), projects)
    assert fields.project_id is None
    assert projects.repo_lookups == []


def test_top_level_agent_type_and_generic_work_item() -> None:
    fields = fields_of(WorkerJob("j", "coalesce", {"agentType": "planner", "workItemId": "w-1"}))
    assert (fields.agent_type, fields.work_item_id) == ("planner", "w-1")


def test_explicit_fields_win_over_the_payload() -> None:
    job = WorkerJob(
        "j",
        "trello",
        {"projectId": "from-data", "workItemId": "from-data", "agentType": "from-data"},
        project_id="explicit-p",
        work_item_id="explicit-w",
        agent_type="explicit-a",
    )
    fields = fields_of(job)
    assert (fields.project_id, fields.work_item_id, fields.agent_type) == (
        "explicit-p",
        "explicit-w",
        "explicit-a",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(42, "42"), ("", None), (True, None), (None, None), (1.5, None), ({"x": 1}, None)],
)
def test_payload_ids_are_strings_or_numbers(value: object, expected: str | None) -> None:
    assert fields_of(WorkerJob("j", "trello", {"workItemId": value})).work_item_id == expected


def test_job_without_id_gets_unknown_epoch_ms_instance_and_random() -> None:
    fields = resolve_job_fields(
        WorkerJob(None, "trello", {}), None, now_ms=1_700_000_000_123, instance_id="router a/1"
    )
    assert re.fullmatch(r"unknown-1700000000123-router_a_1-[0-9a-f]{8}", fields.job_id)
    again = generated_job_id("router a/1", 1_700_000_000_123)
    assert again != fields.job_id  # the random part: one millisecond, one instance, two ids


def test_payload_is_serialised_once_as_compact_unicode_json() -> None:
    data = {"text": "grüße", "n": [1, 2]}
    fields = fields_of(WorkerJob("j", "trello", data))
    assert json.loads(fields.job_data_json) == data
    assert "grüße" in fields.job_data_json


@pytest.mark.parametrize(
    "job",
    [
        WorkerJob("j", "trello", {"s": {1, 2}}),
        WorkerJob("j", "trello", {"x": float("nan")}),
        WorkerJob("j", "trello", {"x": float("inf")}),
        WorkerJob("j", "trello", {"x": b"bytes"}),
        WorkerJob("j", "trello", {"x": "\udc80"}),
        WorkerJob("j", "trello", ["not", "a", "mapping"]),  # type: ignore[arg-type]
        WorkerJob("", "trello", {}),
        WorkerJob("a\x00b", "trello", {}),
        WorkerJob(7, "trello", {}),  # type: ignore[arg-type]
        WorkerJob("j", "", {}),
        WorkerJob("j", "tre\x00llo", {}),
        WorkerJob("j", "trello", {}, project_id=""),
        WorkerJob("j", "trello", {"projectId": "p\x00"}),
        WorkerJob("j", "trello", {"workItemId": "c\x00"}),
        WorkerJob("j", "trello", {"agentType": "a\x00"}),
        WorkerJob("j", "trello", {}, command="echo hi"),
        WorkerJob("j", "trello", {}, command=["ok", "n\x00ul"]),
        WorkerJob("j", "trello", {}, priority=1.5),  # type: ignore[arg-type]
        WorkerJob("j", "trello", {}, priority=True),
        WorkerJob("j", "trello", {}, priority="9"),  # type: ignore[arg-type]
    ],
    ids=lambda job: repr(job)[:60],
)
def test_bad_jobs_are_invalid(job: WorkerJob) -> None:
    with pytest.raises(InvalidJobError):
        fields_of(job)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("job_id", "name"),
    [
        ("coalesce:p:MNG-1", "cascade-worker-coalesce_p_MNG-1"),
        ("plain-id_1.2", "cascade-worker-plain-id_1.2"),
        ("a/b c\\d", "cascade-worker-a_b_c_d"),
        ("grüße", "cascade-worker-gr__e"),
    ],
)
def test_container_name_sanitising(job_id: str, name: str) -> None:
    assert container_name("cascade-worker-", job_id) == name


def test_overlong_ids_get_a_short_unique_valid_name() -> None:
    first = container_name("cascade-worker-", "x" * 300 + "-1")
    second = container_name("cascade-worker-", "x" * 300 + "-2")
    assert first != second
    assert len(first) <= MAX_NAME_LENGTH and len(second) <= MAX_NAME_LENGTH
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", first)
    # Ids that sanitise alike but differ are told apart only by the hash: keep it.
    assert container_name("p-", "a:" + "y" * 200) != container_name("p-", "a/" + "y" * 200)


def test_labels_carry_ids_but_nothing_from_the_environment() -> None:
    labels = LabelSchema("cascade").for_worker(
        instance_id="r-1",
        job_id="j:1",
        job_type="jira",
        project_id=None,
        work_item_id="MNG-1",
        agent_type=None,
        snapshot_enabled=True,
        deadline=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        base_image="img:1",
    )
    assert labels == {
        "cascade.job.id": "j:1",
        "cascade.job.type": "jira",
        "cascade.managed": "true",
        "cascade.router.instance": "r-1",
        "cascade.project.id": "",
        "cascade.work.item.id": "MNG-1",
        "cascade.agent.type": "",
        "cascade.snapshot.enabled": "true",
        "cascade.deadline": "2030-01-02T03:04:05.000+00:00",
        "cascade.base.image": "img:1",
    }


# --------------------------------------------------------------------------- env


def test_env_defaults() -> None:
    fields = fields_of(WorkerJob("job-1", "trello", {"cardId": "c"}))
    env = build_worker_env(fields, sources(redis_url="redis://redis:6379"), snapshot_enabled=False)
    assert env == {
        "JOB_ID": "job-1",
        "JOB_TYPE": "trello",
        "JOB_DATA": '{"cardId": "c"}',
        "REDIS_URL": "redis://redis:6379",
        "CASCADE_POSTGRES_HOST": "postgres",
        "CASCADE_POSTGRES_PORT": "5432",
        "DATABASE_URL": "",
        "LOG_LEVEL": "info",
    }


def test_router_values_replace_the_defaults() -> None:
    environ = {
        "CASCADE_POSTGRES_HOST": "db.internal",
        "CASCADE_POSTGRES_PORT": "6543",
        "DATABASE_URL": "postgres://u:p@db/x",
        "LOG_LEVEL": "debug",
    }
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", {})), sources(environ=environ), snapshot_enabled=False
    )
    for key, value in environ.items():
        assert env[key] == value


@pytest.mark.parametrize("key", sorted(PASS_THROUGH))
def test_pass_throughs_only_when_set(key: str) -> None:
    fields = fields_of(WorkerJob("j", "t", {}))
    without = build_worker_env(fields, sources(), snapshot_enabled=False)
    assert key not in without
    with_one = build_worker_env(
        fields, sources(environ={key: PASS_THROUGH[key]}), snapshot_enabled=False
    )
    assert with_one[key] == PASS_THROUGH[key]
    assert set(with_one) - set(without) == {key}


def test_unrelated_router_variables_stay_out() -> None:
    environ = {"HOME": "/root", "PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "nope"}
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", {})), sources(environ=environ), snapshot_enabled=False
    )
    assert not set(environ) & set(env)


def test_credential_master_key_never_passes() -> None:
    credentials = Credentials({"CREDENTIAL_MASTER_KEY": "from-provider", "OK_KEY": "v1"})
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", {"projectId": "p"})),
        sources(
            environ={"CREDENTIAL_MASTER_KEY": "from-router", **PASS_THROUGH},
            credentials=credentials,
        ),
        snapshot_enabled=True,
    )
    assert "CREDENTIAL_MASTER_KEY" not in env
    assert all("from-" not in value for value in env.values())
    assert env["CASCADE_CREDENTIAL_KEYS"] == "OK_KEY"


def test_snapshot_flags() -> None:
    fields = fields_of(WorkerJob("j", "t", {}))
    env = build_worker_env(fields, sources(), snapshot_enabled=True)
    assert env["CASCADE_SNAPSHOT_ENABLED"] == "true"
    assert "CASCADE_SNAPSHOT_REUSE" not in env
    reused = with_snapshot_reuse(env)
    assert reused["CASCADE_SNAPSHOT_REUSE"] == "true"
    assert "CASCADE_SNAPSHOT_REUSE" not in env  # a copy, not a change
    assert "CASCADE_SNAPSHOT_ENABLED" not in build_worker_env(
        fields, sources(), snapshot_enabled=False
    )


def test_credentials_and_their_key_list() -> None:
    credentials = Credentials({"API_TOKEN": "t-123", "GH_TOKEN": "g-456"})
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", {"projectId": "p-1"})),
        sources(credentials=credentials),
        snapshot_enabled=False,
    )
    assert credentials.calls == ["p-1"]
    assert env["API_TOKEN"] == "t-123"
    assert env["GH_TOKEN"] == "g-456"
    assert env["CASCADE_CREDENTIAL_KEYS"] == "API_TOKEN,GH_TOKEN"
    masked = worker_masker(env).mask("t-123 g-456 API_TOKEN")
    assert masked == "*** *** API_TOKEN"


def test_no_project_means_no_credential_lookup() -> None:
    credentials = Credentials({"API_TOKEN": "t"})
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", {})), sources(credentials=credentials), snapshot_enabled=False
    )
    assert credentials.calls == []
    assert "CASCADE_CREDENTIAL_KEYS" not in env


@pytest.mark.parametrize(
    "bad",
    [{"JOB_ID": "x"}, {"REDIS_URL": "x"}, {"CASCADE_CREDENTIAL_KEYS": "x"}, {"bad-name": "x"}],
)
def test_credentials_that_would_shadow_or_break_the_env_are_skipped(bad: dict[str, str]) -> None:
    credentials = Credentials({**bad, "GOOD": "value"})
    env = build_worker_env(
        fields_of(WorkerJob("job-1", "t", {"projectId": "p"})),
        sources(credentials=credentials),
        snapshot_enabled=False,
    )
    assert env["JOB_ID"] == "job-1"
    assert env["CASCADE_CREDENTIAL_KEYS"] == "GOOD"
    assert "x" not in env.values()


def test_credential_failure_warns_reports_and_omits_both(caplog: pytest.LogCaptureFixture) -> None:
    reporter = RecordingReporter()
    failure = RuntimeError("vault sealed")
    caplog.set_level(logging.WARNING, logger="dockyard")
    env = build_worker_env(
        fields_of(WorkerJob("job-1", "jira", {"projectId": "p-1"})),
        sources(credentials=Credentials(failure), reporter=reporter),
        snapshot_enabled=False,
    )
    assert "CASCADE_CREDENTIAL_KEYS" not in env
    assert env["JOB_ID"] == "job-1"  # the worker still starts
    ((err, source, level, tags, extras),) = reporter.reports
    assert err is failure
    assert source == "credential_resolution"
    assert level == "warning"
    assert tags == {"jobType": "jira"}
    assert extras["jobId"] == "job-1"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "credential" in warnings[0].getMessage()


def test_non_string_credential_value_is_invalid() -> None:
    with pytest.raises(InvalidJobError):
        build_worker_env(
            fields_of(WorkerJob("j", "t", {"projectId": "p"})),
            sources(credentials=Credentials({"TOKEN": 12345})),
            snapshot_enabled=False,
        )


# --------------------------------------------------------------------------- offload


def _payload_of_size(size: int, filler: str = "a") -> dict[str, str]:
    overhead = len(json.dumps({"x": ""}, ensure_ascii=False).encode())
    count, rest = divmod(size - overhead, len(filler.encode()))
    assert rest == 0
    data = {"x": filler * count}
    assert len(json.dumps(data, ensure_ascii=False).encode()) == size
    return data


def test_payload_of_exactly_96_kib_stays_inline() -> None:
    store = Store()
    data = _payload_of_size(96 * 1024)
    env = build_worker_env(
        fields_of(WorkerJob("j", "t", data)), sources(store=store), snapshot_enabled=False
    )
    assert json.loads(env["JOB_DATA"]) == data
    assert "JOB_DATA_REDIS_KEY" not in env
    assert store.puts == []
    assert JOB_DATA_INLINE_LIMIT == 96 * 1024


def test_one_byte_more_goes_to_the_store() -> None:
    store = Store()
    data = _payload_of_size(96 * 1024 + 1)
    fields = fields_of(WorkerJob("job-9", "t", data))
    env = build_worker_env(fields, sources(store=store), snapshot_enabled=False)
    assert env["JOB_DATA_REDIS_KEY"] == "job-data:job-9"
    assert "JOB_DATA" not in env
    ((job_id, payload),) = store.puts
    assert job_id == "job-9"
    assert json.loads(payload) == data


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # 2-byte characters: under the limit in characters, over it in bytes.
    data = _payload_of_size(96 * 1024 + 1, filler="é")
    assert len(json.dumps(data, ensure_ascii=False)) < 96 * 1024
    with pytest.raises(InvalidJobError):
        check_job_data(fields_of(WorkerJob("j", "t", data)), sources())


def test_oversized_payload_without_a_store_is_invalid() -> None:
    fields = fields_of(WorkerJob("j", "t", _payload_of_size(96 * 1024 + 1)))
    with pytest.raises(InvalidJobError):
        check_job_data(fields, sources())
    with pytest.raises(InvalidJobError):
        build_worker_env(fields, sources(), snapshot_enabled=False)
    check_job_data(fields, sources(store=Store()))  # fine with a store


def test_worker_masker_covers_credentials_service_secrets_and_not_plain_settings() -> None:
    env = {
        "CASCADE_CREDENTIAL_KEYS": "A,B,TINY",
        "A": "abcd",
        "B": "abcdefgh",
        "TINY": "ab",
        "DATABASE_URL": "postgres://x",
        "LOG_LEVEL": "info",
    }
    masker = worker_masker(env)
    assert masker.mask("abcdefgh abcd postgres://x info ab tab") == "*** *** *** info *** tab"
