"""Bad inputs, property-based: every refused job fails with a typed error before any Docker
call, and every accepted odd job id yields a valid container name.

The bulk of the examples run against a recording stand-in for docker-py's ``APIClient``
(fast, and it proves no call was made); a handful run on the real engine, through the
fault proxy used as a call counter.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dockyard import (
    ConfigError,
    ContainerManager,
    DockyardError,
    InvalidJobError,
    ProjectConfig,
    RouterConfig,
    WorkerImageResolutionError,
    WorkerJob,
)
from dockyard._errors import InvalidReferenceError, translate
from dockyard._sentry import Reporter
from faultproxy import FaultProxy
from support.engine import is_podman

INLINE_LIMIT = 96 * 1024  # spec §7: larger JOB_DATA goes to the job data store
PREFIX = "cascade-worker-"
MAX_NAME = 128
DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
IMAGE = "dockyard-test-busybox:latest"
FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ON_ENGINE = settings(max_examples=5, deadline=None, database=None)


class CreateRefused(DockyardError):
    """Raised by the stand-in's create: the spawn got as far as Docker, and stops there.

    A `DockyardError`, so `spawn_worker` lets it through as it is (it turns anything else
    into a `WorkerSpawnError`)."""


class DockerPing:
    """Docker's `GET /_ping` answer (no `Libpod-Api-Version`: not Podman)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Api-Version": "1.41"}

    def raise_for_status(self) -> None:
        return None

    def close(self) -> None:
        return None


class RecordingAPI:
    """Stands in for ``docker.APIClient``: records each call; ``create_container`` refuses."""

    base_url = "http+docker://fake"
    timeout = 60

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get(self, url: str, **kwargs: Any) -> DockerPing:
        """Which engine it is, asked once before the first create (Podman's AutoRemove)."""
        self.calls.append(("get", {"url": url}))
        if not url.endswith("/_ping"):
            raise AssertionError(f"unexpected Docker call GET {url}")
        return DockerPing()

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create_host_config", kwargs))
        return dict(kwargs)

    def create_container(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create_container", kwargs))
        raise CreateRefused

    def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            raise AssertionError(f"unexpected Docker call {name}")

        return call

    def create_calls(self) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == "create_container"]


class Store:
    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes]] = []

    def put(self, job_id: str, payload: bytes) -> str:
        self.puts.append((job_id, payload))
        return f"job-data:{len(self.puts)}"


class Projects:
    def __init__(self, projects: list[ProjectConfig]) -> None:
        self.projects = projects

    def list_projects(self) -> list[ProjectConfig]:
        return list(self.projects)

    def find_project_by_repo(self, repo_full_name: str) -> ProjectConfig | None:
        return None


def fake_manager(**kwargs: Any) -> tuple[ContainerManager, RecordingAPI]:
    api = RecordingAPI()
    # No Redis to offload large payloads to: they are refused before any call.
    config = RouterConfig(
        worker_image=IMAGE, router_instance_id="bad-inputs", max_workers=2, redis_url=""
    )
    manager = ContainerManager(config, docker_client=api, reporter=Reporter(), **kwargs)
    return manager, api


@pytest.fixture
def fake() -> Iterator[tuple[ContainerManager, RecordingAPI]]:
    manager, api = fake_manager()
    yield manager, api
    manager.close()


def env_of(create: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in create["environment"])


def expected_name(job_id: str) -> str | None:
    """The spec's name for a short id; None when it is too long and gets a hash."""
    name = PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)
    return name if len(name) <= MAX_NAME else None


# -- strategies ----------------------------------------------------------------------------

# Any Unicode text a router might hand over, except what can never be valid (NUL and lone
# surrogates, tested separately).
odd_char = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
odd_text = st.text(odd_char, min_size=1, max_size=300)
long_text = st.text(odd_char, min_size=MAX_NAME, max_size=2000)
surrogate = st.characters(categories=("Cs",))


@st.composite
def poisoned_text(draw: st.DrawFn, allow_empty: bool = True) -> str:
    """Text that is never acceptable as an id: empty, or with a NUL or a lone surrogate."""
    kinds = ["nul", "surrogate"] + (["empty"] if allow_empty else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return ""
    bad = "\x00" if kind == "nul" else draw(surrogate)
    text = draw(st.text(odd_char, max_size=50))
    at = draw(st.integers(0, len(text)))
    return text[:at] + bad + text[at:]


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),  # NUL allowed here
)
json_data = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.recursive(
        json_scalar,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    max_size=6,
)


class Opaque:
    """Not JSON-serialisable."""


not_json = st.one_of(
    st.builds(Opaque),
    st.sets(st.integers(), min_size=1, max_size=3),
    st.binary(min_size=1, max_size=10),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(surrogate, min_size=1, max_size=3),
)


@st.composite
def non_json_data(draw: st.DrawFn) -> dict[Any, Any]:
    data = dict(draw(json_data))
    if draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(not_json)
    else:
        data[(1, 2)] = "tuple keys are not JSON"
    return data


# References Docker refuses: each breaks one rule of `name[:tag][@digest]`.
@st.composite
def invalid_image_reference(draw: st.DrawFn) -> str:
    name = draw(st.from_regex(r"[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,2}", fullmatch=True))
    tag = draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    breakage = draw(
        st.sampled_from(
            [
                "uppercase-name",
                "bad-char-in-name",
                "leading-separator",
                "trailing-separator",
                "empty-tag",
                "bad-tag-start",
                "long-tag",
                "short-digest",
                "two-colons",
                "blank",
                "unicode",
            ]
        )
    )
    if breakage == "uppercase-name":
        return name.upper() + "X" + f":{tag}"
    if breakage == "bad-char-in-name":
        bad = draw(st.sampled_from(list(" !#$%&*()+,;<=>?[]^`{|}~\"'\\")))
        at = draw(st.integers(0, len(name)))
        return name[:at] + bad + name[at:]
    if breakage == "leading-separator":
        return draw(st.sampled_from(["-", ".", "_", "/"])) + name
    if breakage == "trailing-separator":
        return name + draw(st.sampled_from(["-", ".", "_", "/"]))
    if breakage == "empty-tag":
        return name + ":"
    if breakage == "bad-tag-start":
        return f"{name}:{draw(st.sampled_from(['-', '.']))}{tag}"
    if breakage == "long-tag":
        return f"{name}:{'t' * 129}"
    if breakage == "short-digest":
        return f"{name}@sha256:{'a' * draw(st.integers(0, 31))}"
    if breakage == "two-colons":
        return f"{name}:{tag}:{tag}"
    if breakage == "blank":
        return draw(st.sampled_from(["", " ", "\t", " " + name]))
    return name + draw(
        st.text(
            st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1, max_size=3
        )
    )


# -- refused before any Docker call ----------------------------------------------------------


@FAST
@given(job_id=poisoned_text())
def test_poisoned_job_ids_are_refused(job_id: str) -> None:
    manager, api = fake_manager()
    try:
        with pytest.raises(InvalidJobError):
            manager.spawn_worker(WorkerJob(id=job_id, type="t"))
        assert api.calls == []
        assert manager.get_active_worker_count() == 0
    finally:
        manager.close()


@FAST
@given(
    field=st.sampled_from(["type", "project_id", "work_item_id", "agent_type", "command"]),
    value=poisoned_text(allow_empty=False),
)
def test_poisoned_job_fields_are_refused(field: str, value: str) -> None:
    manager, api = fake_manager()
    kwargs: dict[str, Any] = {"id": "job", "type": "t"}
    kwargs[field] = ["sh", value] if field == "command" else value
    try:
        with pytest.raises(InvalidJobError):
            manager.spawn_worker(WorkerJob(**kwargs))
        assert api.calls == []
    finally:
        manager.close()


@FAST
@given(
    # (job type, the payload key that type reads an id from)
    where=st.sampled_from(
        [("trello", "projectId"), ("trello", "workItemId"), ("jira", "issueKey")]
    ),
    value=poisoned_text(allow_empty=False),
)
def test_poisoned_ids_inside_the_payload_are_refused(where: tuple[str, str], value: str) -> None:
    job_type, key = where
    manager, api = fake_manager()
    try:
        with pytest.raises(InvalidJobError):
            manager.spawn_worker(WorkerJob(id="job", type=job_type, data={key: value}))
        assert api.calls == []
    finally:
        manager.close()


@FAST
@given(data=non_json_data())
def test_non_json_payloads_are_refused(data: dict[Any, Any]) -> None:
    manager, api = fake_manager()
    try:
        with pytest.raises(InvalidJobError):
            manager.spawn_worker(WorkerJob(id="job", type="t", data=data))
        assert api.calls == []
    finally:
        manager.close()


@FAST
@given(data=st.one_of(st.lists(st.integers()), st.text(), st.integers(), st.none()))
def test_payloads_that_are_not_mappings_are_refused(data: Any) -> None:
    manager, api = fake_manager()
    try:
        with pytest.raises(InvalidJobError):
            manager.spawn_worker(WorkerJob(id="job", type="t", data=data))
        assert api.calls == []
    finally:
        manager.close()


@settings(max_examples=40, deadline=None, database=None)
@given(
    char=st.sampled_from(["x", "é", "€", "😀"]),  # 1 to 4 bytes of UTF-8 each
    size=st.integers(INLINE_LIMIT - 64, INLINE_LIMIT + 64),
)
@example(char="x", size=INLINE_LIMIT)
def test_the_inline_payload_limit_is_exact_and_large_payloads_need_a_store(
    char: str, size: int
) -> None:
    data = {"blob": char * (size // len(char.encode()))}
    encoded = len(json.dumps(data, ensure_ascii=False).encode())
    assume(abs(encoded - INLINE_LIMIT) <= 64)
    manager, api = fake_manager()
    try:
        job = WorkerJob(id="big", type="t", data=data)
        if encoded > INLINE_LIMIT:
            with pytest.raises(InvalidJobError):
                manager.spawn_worker(job)
            assert api.calls == []
        else:
            with pytest.raises(CreateRefused):
                manager.spawn_worker(job)
            assert json.loads(env_of(api.create_calls()[0])["JOB_DATA"]) == data
    finally:
        manager.close()
    store = Store()
    manager, api = fake_manager(job_data_store=store)
    try:
        with pytest.raises(CreateRefused):
            manager.spawn_worker(WorkerJob(id="big", type="t", data=data))
        env = env_of(api.create_calls()[0])
        if encoded > INLINE_LIMIT:
            assert "JOB_DATA" not in env
            assert env["JOB_DATA_REDIS_KEY"] == "job-data:1"
            assert json.loads(store.puts[0][1]) == data
        else:
            assert "JOB_DATA_REDIS_KEY" not in env
            assert store.puts == []
    finally:
        manager.close()


@FAST
@given(reference=invalid_image_reference())
def test_invalid_router_images_are_a_config_error(reference: str) -> None:
    with pytest.raises(ConfigError) as info:
        RouterConfig(worker_image=reference)
    assert info.value.name == "worker_image"


@FAST
@given(
    status=st.sampled_from([None, "", "pending", "failed", "VERIFIED", "verified"]),
    digest=st.sampled_from([None, "", "registry.example/app@sha256:" + "a" * 64]),
)
def test_unusable_project_images_are_refused(status: str | None, digest: str | None) -> None:
    assume(not (status == "verified" and digest))
    project = ProjectConfig(
        id="p1",
        worker_image="registry.example/app:1",
        worker_image_status=status,
        worker_image_digest=digest,
    )
    manager, api = fake_manager(projects=Projects([project]))
    try:
        with pytest.raises(WorkerImageResolutionError):
            manager.spawn_worker(WorkerJob(id="job", type="t", project_id="p1"))
        assert api.calls == []
    finally:
        manager.close()


@FAST
@given(reference=invalid_image_reference())
def test_malformed_verified_project_digests_are_refused(reference: str) -> None:
    project = ProjectConfig(
        id="p1",
        worker_image="registry.example/app:1",
        worker_image_status="verified",
        worker_image_digest=reference,
    )
    manager, api = fake_manager(projects=Projects([project]))
    try:
        with pytest.raises((InvalidJobError, WorkerImageResolutionError)):
            manager.spawn_worker(WorkerJob(id="job", type="t", project_id="p1"))
        assert api.calls == []
    finally:
        manager.close()


# -- accepted odd inputs -------------------------------------------------------------------


@FAST
@given(job_id=st.one_of(odd_text, long_text), data=json_data)
@example(job_id="coalesce:p:MNG-1", data={})
@example(job_id="\u202eevil\u202c", data={"k": "v\x00w"})
@example(job_id="x" * (MAX_NAME - len(PREFIX)), data={})
@example(job_id="x" * (MAX_NAME - len(PREFIX) + 1), data={})
def test_odd_ids_and_payloads_reach_create_intact_with_a_valid_name(
    job_id: str, data: dict[str, Any]
) -> None:
    manager, api = fake_manager()
    try:
        with pytest.raises(CreateRefused):
            manager.spawn_worker(WorkerJob(id=job_id, type="t", data=data))
    finally:
        manager.close()
    (create,) = api.create_calls()
    name = create["name"]
    assert DOCKER_NAME.fullmatch(name), name
    assert name.startswith(PREFIX) and len(name) <= MAX_NAME
    wanted = expected_name(job_id)
    if wanted is not None:
        assert name == wanted
    else:
        assert re.fullmatch(r".*-[0-9a-f]{12}", name), name
    assert create["labels"]["cascade.job.id"] == job_id
    env = env_of(create)
    assert env["JOB_ID"] == job_id
    assert json.loads(env["JOB_DATA"]) == data  # NUL in a payload string survives, escaped


@FAST
@given(first=long_text, second=long_text)
def test_long_ids_never_share_a_name(first: str, second: str) -> None:
    assume(first != second)
    names = []
    for job_id in (first, second):
        manager, api = fake_manager()
        try:
            with pytest.raises(CreateRefused):
                manager.spawn_worker(WorkerJob(id=job_id, type="t"))
        finally:
            manager.close()
        names.append(api.create_calls()[0]["name"])
    assert names[0] != names[1]


# -- on the real engine --------------------------------------------------------------------


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://") :] if host.startswith("unix://") else "/var/run/docker.sock"


@pytest.fixture
def counted(docker_client: docker.DockerClient) -> Iterator[tuple[FaultProxy, docker.APIClient]]:
    """A client whose every Docker call the proxy counts (no faults)."""
    proxy = FaultProxy(upstream=engine_socket()).start()
    api = docker.APIClient(base_url=proxy.base_url, timeout=30, max_pool_size=16)
    yield proxy, api
    api.close()
    proxy.stop()


bad_job = st.one_of(
    poisoned_text().map(lambda job_id: WorkerJob(id=job_id, type="t")),
    non_json_data().map(lambda data: WorkerJob(id="job", type="t", data=data)),
    st.just(WorkerJob(id="big", type="t", data={"blob": "x" * (INLINE_LIMIT + 1)})),
    poisoned_text(allow_empty=False).map(lambda v: WorkerJob(id="job", type="t", agent_type=v)),
)


def test_refused_jobs_make_no_call_to_the_engine(counted, docker_client, instance_id, test_image):
    proxy, api = counted
    # No Redis to offload large payloads to: they are refused before any call.
    config = RouterConfig(worker_image=test_image, router_instance_id=instance_id, redis_url="")
    with ContainerManager(config, docker_client=api) as manager:

        @ON_ENGINE
        @given(job=bad_job)
        def refused(job: WorkerJob) -> None:
            with pytest.raises(InvalidJobError):
                manager.spawn_worker(job)

        refused()
    assert proxy.count("any") == 0  # not a single request beyond docker-py's version probe
    assert (
        docker_client.api.containers(
            all=True, filters={"label": f"cascade.router.instance={instance_id}"}
        )
        == []
    )


@pytest.mark.parametrize(
    "reference",
    ["Busybox:latest", "busybox:", "busy box", "-busybox", "busybox:.tag", "busybox@sha256:abc"],
)
def test_references_refused_here_are_refused_by_the_engine_too(docker_client, reference):
    with pytest.raises(ConfigError):
        RouterConfig(worker_image=reference)
    with pytest.raises(docker.errors.APIError) as info:
        docker_client.api.create_container(reference, ["true"])
    # Docker answers 400, Podman 500 with its message (README, Engines); dockyard's error
    # table takes both for the same refusal.
    assert info.value.status_code == (500 if is_podman(docker_client) else 400), info.value
    assert isinstance(translate("create", info.value), InvalidReferenceError), info.value


ODD_IDS = [
    "coalesce:p:MNG-1",
    "ünïcödé/工作/😀",
    "line\nbreak\ttab",
    "\u202eright-to-left\u202c",
    "..",
    "x" * 300,
    "spaces and 'quotes' \"both\" $(not a subshell)",
]


def test_odd_valid_ids_run_on_the_engine(make_manager):
    manager = make_manager(docker_network="none", max_workers=len(ODD_IDS))
    workers = []
    for job_id in ODD_IDS:
        # The worker checks that JOB_ID arrived byte for byte.
        command = ["sh", "-c", 'test "$JOB_ID" = "$1"', "sh", job_id]
        workers.append(manager.spawn_worker(WorkerJob(id=job_id, type="odd", command=command)))
    names = [w.container_name for w in workers]
    assert len(set(names)) == len(names)
    for worker in workers:
        assert DOCKER_NAME.fullmatch(worker.container_name)
        outcome = manager.wait_for_worker(worker.job_id, timeout=30)
        assert (outcome.status, outcome.exit_code) == ("succeeded", 0), worker.job_id


def test_generated_odd_ids_run_on_the_engine(make_manager):
    manager = make_manager(docker_network="none")

    @ON_ENGINE
    @given(job_id=odd_text)
    def runs(job_id: str) -> None:
        command = ["sh", "-c", 'test "$JOB_ID" = "$1"', "sh", job_id]
        manager.spawn_worker(WorkerJob(id=job_id, type="odd", command=command))
        outcome = manager.wait_for_worker(job_id, timeout=30)
        assert (outcome.status, outcome.exit_code) == ("succeeded", 0)

    runs()
