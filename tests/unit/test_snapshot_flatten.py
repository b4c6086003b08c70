"""Snapshots that last a work item's whole life, on the fake engine: when a snapshot is
written flattened, what a failed commit does to the pair's snapshot, and how a retired
snapshot that is another image's parent is removed (with its child, never retried)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dockyard import ContainerManager, RouterConfig, WorkerJob
from dockyard._errors import EngineImageHasChildrenError, translate
from dockyard._flatten import FlattenError, differences, import_changes
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter, api_error

PROJECT, WORK_ITEM = "p", "w"
SECRET = "s3cr3t-value"


class Credentials:
    def get_project_credentials(self, project_id: str) -> dict[str, str]:
        return {"API_TOKEN": SECRET}


class Rig:
    """A snapshot-enabled manager on a fake engine, and one work item to run again and again."""

    def __init__(self, **overrides: Any) -> None:
        self.api = FakeDockerAPI()
        self.reporter = RecordingReporter()
        config = RouterConfig(
            worker_image=DEFAULT_IMAGE,
            router_instance_id="unit",
            snapshot_enabled=True,
            snapshot_image_prefix="unit-snap-",
            **overrides,
        )
        self.manager = ContainerManager(
            config, docker_client=self.api, reporter=self.reporter, credentials=Credentials()
        )
        self.runs = 0

    def run(self) -> str:
        """One clean run of the work item; returns the image it was launched from."""
        self.runs += 1
        job = WorkerJob(
            f"job-{self.runs}", "trello", {}, project_id=PROJECT, work_item_id=WORK_ITEM
        )
        worker = self.manager.spawn_worker(job)
        self.api.exit(worker.container_id, 0)
        outcome = self.manager.wait_for_worker(worker.job_id, timeout=10)
        assert outcome.status == "succeeded", outcome
        return worker.image

    def snapshot(self) -> dict[str, Any] | None:
        meta = self.manager.snapshots.get(PROJECT, WORK_ITEM)
        if meta is None:
            return None
        return self.api.inspect_image(meta.image_name)

    def layers(self) -> int:
        info = self.snapshot()
        assert info is not None
        return len(info["RootFS"]["Layers"])

    def images(self) -> set[str]:
        """Image ids the fake engine holds, base image aside."""
        with self.api.lock:
            return {i["Id"] for n, i in self.api.image_info.items() if n.startswith("sha256:")}


@pytest.fixture
def rig() -> Iterator[type[Rig]]:
    made: list[Rig] = []

    class Made(Rig):
        def __init__(self, **overrides: Any) -> None:
            super().__init__(**overrides)
            made.append(self)

    yield Made
    for each in made:
        each.manager.close()


# --------------------------------------------------------------------------- the decision


def test_a_snapshot_past_the_layer_limit_is_written_flattened(rig: type[Rig]) -> None:
    r = rig(snapshot_max_layers=4)
    counts = []
    for _ in range(9):
        r.run()
        counts.append(r.layers())
    # The base counts one layer; each commit adds one; a commit of 5 layers is flattened.
    assert counts == [2, 3, 4, 1, 2, 3, 4, 1, 2]
    assert len(r.api.calls_of("import")) == 2
    assert len(r.api.calls_of("export")) == 2
    info = r.snapshot()
    assert info is not None
    assert r.reporter.sources() == []


def test_the_flattened_snapshot_keeps_the_scrub_and_the_labels(rig: type[Rig]) -> None:
    r = rig(snapshot_max_layers=2)
    r.run()
    r.run()  # 3 layers: flattened
    info = r.snapshot()
    assert info is not None and len(info["RootFS"]["Layers"]) == 1 and not info["Parent"]
    env = dict(item.partition("=")[::2] for item in info["Config"]["Env"])
    assert env["API_TOKEN"] == "" and env["JOB_ID"] == "" and env["CASCADE_CREDENTIAL_KEYS"] == ""
    assert env["LOG_LEVEL"] == "info"
    assert SECRET not in repr(info)
    labels = info["Config"]["Labels"]
    assert labels["cascade.managed"] == "" and labels["cascade.router.instance"] == ""
    assert labels["cascade.snapshot.instance"] == "unit"
    assert labels["cascade.snapshot.work.item.id"] == WORK_ITEM
    (changes,) = r.api.calls_of("import")
    assert SECRET not in repr(changes)
    assert r.run() == r.manager.snapshots.get(PROJECT, WORK_ITEM).image_name  # type: ignore[union-attr]


def test_import_changes_write_values_the_import_reads_back_unchanged() -> None:
    config = {
        "Env": ["A=has space", 'B=$HOME \\ "q"', "C="],
        "Cmd": ["sh", "-c", "echo $x"],
        "Entrypoint": None,
        "WorkingDir": "/w $x",
        "User": "1000:1000",
        "Labels": {"k": 'v "$y"', "empty": ""},
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/data": {}},
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "Retries": 3},
    }
    changes = import_changes(config)
    assert 'ENV B="\\$HOME \\\\ \\"q\\""' in changes
    assert 'CMD ["sh", "-c", "echo $x"]' in changes
    assert 'LABEL "k"="v \\"\\$y\\""' in changes
    assert 'WORKDIR "/w \\$x"' in changes  # quoted: Docker would expand `$x`
    assert "USER 1000:1000" in changes  # bare: Podman's import keeps quotes
    assert 'HEALTHCHECK --interval=30000000000ns --retries=3 CMD ["true"]' in changes
    assert differences(config, config) == []
    assert differences(config, {**config, "User": ""}) == ["User"]
    assert differences({"Labels": {}, "Env": None}, {"Labels": None, "Env": []}) == []


def test_a_value_the_import_cannot_carry_is_refused_without_showing_it() -> None:
    with pytest.raises(FlattenError) as raised:
        import_changes({"Env": ["PEM=line one\nline two"]})
    assert "PEM" in str(raised.value) and "line one" not in str(raised.value)


# --------------------------------------------------------------------------- failed commits


def test_a_failed_commit_invalidates_the_snapshot_and_the_next_run_starts_from_base(
    rig: type[Rig],
) -> None:
    r = rig()
    r.run()
    r.run()
    stale = r.manager.snapshots.get(PROJECT, WORK_ITEM)
    assert stale is not None
    r.api.failures["commit"] = [api_error(500, "max depth exceeded")]
    r.run()
    assert r.reporter.sources() == ["snapshot_commit"]
    assert r.manager.snapshots.get(PROJECT, WORK_ITEM) is None  # entry dropped
    assert stale.image_name not in r.api.image_names  # the name is gone too
    r.manager.run_snapshot_cleanup()
    assert r.images() == set()  # every snapshot image of the pair retired
    assert r.run() == DEFAULT_IMAGE  # the next run starts cold, from the base image
    assert r.manager.snapshots.get(PROJECT, WORK_ITEM) is not None


def test_a_failed_flatten_is_a_failed_commit(rig: type[Rig]) -> None:
    r = rig(snapshot_max_layers=2)
    r.run()
    r.api.failures["import"] = [api_error(500, "no space left on device")]
    r.run()  # would have been flattened
    assert r.reporter.sources() == ["snapshot_commit"]
    assert r.manager.snapshots.get(PROJECT, WORK_ITEM) is None
    r.manager.run_snapshot_cleanup()
    assert r.images() == set()
    assert r.run() == DEFAULT_IMAGE


def test_a_stale_snapshot_still_in_use_loses_its_name_at_once(rig: type[Rig]) -> None:
    r = rig()
    r.run()
    stale = r.manager.snapshots.get(PROJECT, WORK_ITEM)
    assert stale is not None
    r.api.failures["commit"] = [api_error(500, "max depth exceeded")]
    # The finished container still holds the stale image: the engine refuses to untag it.
    r.api.failures["remove_image"] = [
        api_error(409, "conflict: unable to remove repository reference (must force)")
    ]
    r.run()
    assert stale.image_name not in r.api.image_names
    repository = stale.image_name.rpartition(":")[0]
    assert [t for t in r.api.calls_of("tag") if t[1] == repository and t[2].startswith("retired-")]
    assert r.run() == DEFAULT_IMAGE


def test_a_snapshot_under_a_retired_name_is_never_synced_for_reuse(rig: type[Rig]) -> None:
    r = rig()
    r.run()
    meta = r.manager.snapshots.get(PROJECT, WORK_ITEM)
    assert meta is not None
    image_id = r.api.inspect_image(meta.image_name)["Id"]
    repository = meta.image_name.rpartition(":")[0]
    r.api.tag(image_id, repository, "retired-0123456789ab")
    r.api.remove_image(meta.image_name)  # what a failed commit leaves if the router stops then

    reporter = RecordingReporter()
    with ContainerManager(r.manager.config, docker_client=r.api, reporter=reporter) as second:
        second.sync_snapshots_from_docker()  # registers nothing for reuse, then cleans up
        assert second.snapshots.get(PROJECT, WORK_ITEM) is None
    assert image_id not in r.images()  # and the image is gone
    assert reporter.sources() == []


# --------------------------------------------------------------------------- parents


def test_the_engines_dependent_child_refusal_is_a_typed_error() -> None:
    err = api_error(
        409,
        "conflict: unable to delete 1234 (cannot be forced) - image has dependent child images",
    )
    typed = translate("remove_image", err)
    assert isinstance(typed, EngineImageHasChildrenError)
    assert isinstance(translate("remove_image", typed), EngineImageHasChildrenError)
    in_use = api_error(
        409, "conflict: unable to delete 1234 (must be forced) - image is being used"
    )
    assert not isinstance(translate("remove_image", in_use), EngineImageHasChildrenError)


def test_a_retired_parent_is_kept_for_its_child_not_retried_and_goes_with_it(
    rig: type[Rig],
) -> None:
    # The fake engine names a commit as it is, its parent the previous snapshot: as Docker
    # 25 and later do.
    r = rig(snapshot_max_layers=5)
    for _ in range(3):
        r.run()
    kept = r.manager._parts.snapshot_manager.kept_parents()
    assert len(kept) == 2  # runs 1 and 2: each the parent of the next snapshot
    refused = [c for c in r.api.calls_of("remove_image") if c in kept]
    for _ in range(5):
        r.manager.run_snapshot_cleanup()
    assert [c for c in r.api.calls_of("remove_image") if c in kept] == refused  # no retries
    assert r.reporter.sources() == []  # and nothing reported

    for _ in range(2):
        r.run()  # the fifth commit (6 layers) is flattened: no parent any more
    assert r.layers() == 1
    r.manager.run_snapshot_cleanup()
    info = r.snapshot()
    assert info is not None
    assert r.images() == {info["Id"]}  # the whole old chain went with its last child
    assert r.manager._parts.snapshot_manager.kept_parents() == set()
    assert r.reporter.sources() == []


def test_an_evicted_chain_leaves_no_untagged_parent(rig: type[Rig]) -> None:
    r = rig(snapshot_max_count=0)  # the next cleanup evicts the pair's snapshot
    for _ in range(4):
        r.run()
    assert len(r.images()) == 4  # the named snapshot and its three parents
    r.manager.run_snapshot_cleanup()
    assert r.manager.snapshots.get(PROJECT, WORK_ITEM) is None
    assert r.images() == set()  # the parents went with the evicted head
    assert r.manager._parts.snapshot_manager.kept_parents() == set()
    assert r.reporter.sources() == []
