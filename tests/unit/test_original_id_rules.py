"""The original router's id rules, table-driven from its own test cases.

Sources: `tests/unit/router/worker-env.test.ts` (extractProjectIdFromJob,
extractWorkItemId, extractAgentType), `tests/unit/router/github-job-project-id.test.ts`
(GitHub jobs carry the resolved project), and the job shapes of `src/router/queue.ts`
and the adapters (linear `workItemId`, sentry `triggerResult.lockKey`).
"""

from __future__ import annotations

from typing import Any

import pytest

from dockyard import ProjectConfig, WorkerJob
from dockyard._jobs import project_id_of, resolve_job_fields, work_item_id_of


class Projects:
    """A project directory that records repository lookups."""

    def __init__(self, *projects: ProjectConfig) -> None:
        self.projects = list(projects)
        self.lookups: list[str] = []

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        self.lookups.append(repo_full_name)
        return next((p for p in self.projects if p.repo_full_name == repo_full_name), None)


PRIMARY = ProjectConfig("primary", repo_full_name="acme/web")
GH = ProjectConfig("proj-gh", repo_full_name="owner/repo")

# (case, job type, payload, expected project id, repository looked up or None)
PROJECT_CASES: list[tuple[str, str, dict[str, Any], str | None, str | None]] = [
    ("trello", "trello", {"projectId": "proj-trello"}, "proj-trello", None),
    ("jira", "jira", {"projectId": "proj-jira"}, "proj-jira", None),
    ("linear", "linear", {"projectId": "proj-linear"}, "proj-linear", None),
    ("sentry", "sentry", {"projectId": "proj-sentry"}, "proj-sentry", None),
    ("github by repo", "github", {"repoFullName": "owner/repo"}, "proj-gh", "owner/repo"),
    ("github without repo", "github", {}, None, None),
    (
        "github stamped id wins over the repo",
        "github",
        {"repoFullName": "acme/web", "projectId": "secondary"},
        "secondary",
        None,
    ),
    (
        "github older job: repo fallback",
        "github",
        {"repoFullName": "acme/web"},
        "primary",
        "acme/web",
    ),
    ("github unknown repo", "github", {"repoFullName": "nobody/none"}, None, "nobody/none"),
    ("manual-run", "manual-run", {"projectId": "proj-m"}, "proj-m", None),
    ("retry-run", "retry-run", {"projectId": "proj-r"}, "proj-r", None),
    ("debug-analysis", "debug-analysis", {"projectId": "proj-da"}, "proj-da", None),
    ("trello without project", "trello", {}, None, None),
]


@pytest.mark.parametrize(
    ("job_type", "data", "expected", "looked_up"),
    [case[1:] for case in PROJECT_CASES],
    ids=[case[0] for case in PROJECT_CASES],
)
def test_project_id(
    job_type: str, data: dict[str, Any], expected: str | None, looked_up: str | None
) -> None:
    projects = Projects(PRIMARY, GH)
    assert project_id_of(job_type, data, projects) == expected
    assert projects.lookups == ([looked_up] if looked_up else [])


# (case, job type, payload, expected work item id)
WORK_ITEM_CASES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("trello workItemId", "trello", {"workItemId": "card-1"}, "card-1"),
    ("trello ignores cardId", "trello", {"cardId": "card-1"}, None),
    ("trello workItemId over cardId", "trello", {"cardId": "old", "workItemId": "new"}, "new"),
    ("jira issueKey", "jira", {"issueKey": "PROJ-123"}, "PROJ-123"),
    ("jira issueKey over workItemId", "jira", {"issueKey": "K-1", "workItemId": "w"}, "K-1"),
    ("jira without issueKey", "jira", {"workItemId": "w-1"}, "w-1"),
    ("github trigger work item", "github", {"triggerResult": {"workItemId": "gh-wi-1"}}, "gh-wi-1"),
    ("github ignores top-level", "github", {"workItemId": "top"}, None),
    ("github none", "github", {}, None),
    ("gitlab trigger work item", "gitlab", {"triggerResult": {"workItemId": "gl-1"}}, "gl-1"),
    ("linear workItemId", "linear", {"workItemId": "issue-uuid"}, "issue-uuid"),
    ("linear comment without issue", "linear", {}, None),
    ("sentry lockKey", "sentry", {"triggerResult": {"lockKey": "alert:42"}}, "alert:42"),
    (
        "sentry lockKey over workItemId",
        "sentry",
        {"triggerResult": {"lockKey": "alert:42", "workItemId": "w"}},
        "alert:42",
    ),
    ("sentry workItemId", "sentry", {"triggerResult": {"workItemId": "w-9"}}, "w-9"),
    ("dashboard workItemId", "manual-run", {"workItemId": "wi-dash"}, "wi-dash"),
    ("dashboard ignores cardId", "retry-run", {"cardId": "c"}, None),
    ("other type: trigger not read", "coalesce", {"triggerResult": {"workItemId": "w"}}, None),
]


@pytest.mark.parametrize(
    ("job_type", "data", "expected"),
    [case[1:] for case in WORK_ITEM_CASES],
    ids=[case[0] for case in WORK_ITEM_CASES],
)
def test_work_item_id(job_type: str, data: dict[str, Any], expected: str | None) -> None:
    assert work_item_id_of(job_type, data) == expected


# (case, payload, expected agent type)
AGENT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("trigger agent", {"triggerResult": {"agentType": "review"}}, "review"),
    ("dashboard top-level", {"agentType": "implementation"}, "implementation"),
    ("none", {}, None),
    (
        "trigger over top-level",
        {"agentType": "top", "triggerResult": {"agentType": "nested"}},
        "nested",
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in AGENT_CASES], ids=[c[0] for c in AGENT_CASES]
)
@pytest.mark.parametrize("job_type", ["github", "manual-run", "trello"])
def test_agent_type(job_type: str, data: dict[str, Any], expected: str | None) -> None:
    assert resolve_job_fields(WorkerJob("j", job_type, data), None).agent_type == expected


def test_explicit_fields_win_and_skip_the_repo_lookup() -> None:
    projects = Projects(PRIMARY)
    job = WorkerJob(
        "j",
        "github",
        {"repoFullName": "acme/web", "triggerResult": {"workItemId": "w", "agentType": "a"}},
        project_id="explicit",
        work_item_id="explicit-w",
        agent_type="explicit-a",
    )
    fields = resolve_job_fields(job, projects)
    assert (fields.project_id, fields.work_item_id, fields.agent_type) == (
        "explicit",
        "explicit-w",
        "explicit-a",
    )
    assert projects.lookups == []
