"""The dangling-image loop on the real engine: only dangling images labelled as dockyard's go.

Dangling images are made the way snapshots and rebuilds make them: building two images
under one tag leaves the first one untagged. Each test uses its own label prefix, so the
loop (whose `<prefix>.managed=true` filter spans the engine, as the original's does)
only ever meets this test's images.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from dockyard._cli import main as cli_main
from support.sentry import CapturedEvents
from support.threads import ThreadBaseline


class Images:
    """Builds small images from the test image and removes them all at teardown."""

    def __init__(self, client: docker.DockerClient, base: str) -> None:
        self.client = client
        self.base = base
        self.made: list[str] = []

    def build(self, tag: str, labels: dict[str, str]) -> str:
        lines = [f"FROM {self.base}"]
        lines += [f'LABEL "{key}"="{value}"' for key, value in labels.items()]
        lines.append(f"ENV DOCKYARD_TEST_MARK={uuid.uuid4().hex}")  # a new image id every time
        image, _ = self.client.images.build(
            fileobj=io.BytesIO("\n".join(lines).encode()), tag=tag, rm=True, pull=False
        )
        image_id = str(image.id)
        self.made.append(image_id)
        return image_id

    def exists(self, image_id: str) -> bool:
        try:
            self.client.images.get(image_id)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as err:
            # Podman answers for an image removed while it reads it: 500 "image not known".
            if "image not known" in str(err):
                return False
            raise
        return True

    def dangling(self, image_id: str) -> bool:
        return self.exists(image_id) and not self.client.images.get(image_id).tags

    def cleanup(self) -> None:
        for image_id in reversed(self.made):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.images.remove(image_id, force=True)


@pytest.fixture
def images(docker_client: docker.DockerClient, test_image: str) -> Iterator[Images]:
    made = Images(docker_client, test_image)
    yield made
    made.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"dockyard-test-{uuid.uuid4().hex[:8]}"


def _pair(images: Images, tag: str, labels: dict[str, str]) -> tuple[str, str]:
    """Two builds under one tag: (the now dangling first image, the tagged second one)."""
    first = images.build(tag, labels)
    second = images.build(tag, labels)
    assert images.dangling(first) and not images.dangling(second)
    return first, second


def test_only_labelled_dangling_images_are_removed(
    make_manager: Callable[..., Any], images: Images, prefix: str, instance_id: str
) -> None:
    managed = {f"{prefix}.managed": "true"}
    mine = {f"{prefix}.snapshot.instance": instance_id}
    theirs = {f"{prefix}.snapshot.instance": instance_id + "-other"}
    repo = f"dockyard-test-dangling-{prefix.rsplit('-', 1)[-1]}"
    managed_old, managed_new = _pair(images, f"{repo}-managed:1", managed)
    snap_old, snap_new = _pair(images, f"{repo}-snap:1", mine)
    other_old, other_new = _pair(images, f"{repo}-other:1", theirs)
    plain_old, plain_new = _pair(images, f"{repo}-plain:1", {})

    manager = make_manager(label_prefix=prefix)
    removed = manager.run_dangling_image_cleanup()

    assert set(removed) == {managed_old, snap_old}
    assert not images.exists(managed_old) and not images.exists(snap_old)
    # Untouched: unlabelled and other instances' dangling images, and every tagged one.
    for kept in (other_old, plain_old):
        assert images.dangling(kept)
    for tagged in (managed_new, snap_new, other_new, plain_new):
        assert images.exists(tagged) and not images.dangling(tagged)
    assert manager.run_dangling_image_cleanup() == []  # nothing left to do


def test_an_image_in_use_is_left_quietly(
    make_manager: Callable[..., Any],
    images: Images,
    prefix: str,
    docker_client: docker.DockerClient,
    sentry_events: CapturedEvents,
) -> None:
    old, _ = _pair(images, f"dockyard-test-inuse-{prefix[-8:]}:1", {f"{prefix}.managed": "true"})
    container = docker_client.containers.create(old, command=["true"])
    try:
        manager = make_manager(label_prefix=prefix)
        assert manager.run_dangling_image_cleanup() == []  # 409: in use by the container
        assert images.exists(old)
        assert sentry_events.with_source("dangling_image_remove") == []
    finally:
        container.remove(force=True)
    assert manager.run_dangling_image_cleanup() == [old]


def test_the_loop_runs_until_stopped_and_close_ends_it(
    thread_baseline: ThreadBaseline,
    make_manager: Callable[..., Any],
    images: Images,
    prefix: str,
) -> None:
    # Built first: a pass during a build can take the builder's labelled step images
    # (untagged and childless for a moment), as the original's loop could.
    old, new = _pair(images, f"dockyard-test-loop-{prefix[-8:]}:1", {f"{prefix}.managed": "true"})
    manager = make_manager(label_prefix=prefix)
    manager.start_dangling_image_cleanup(interval=0.2)
    deadline = time.monotonic() + 10
    while images.exists(old):
        assert time.monotonic() < deadline, "the loop did not remove the dangling image"
        time.sleep(0.05)
    assert images.exists(new)
    manager.close()
    thread_baseline.assert_no_new_threads()


def test_a_list_failure_is_reported_as_dangling_image_cleanup_scan(
    make_manager: Callable[..., Any],
    prefix: str,
    proxy: Any,
    proxied: docker.APIClient,
    sentry_events: CapturedEvents,
) -> None:
    from faultproxy import FaultRule  # noqa: PLC0415

    manager = make_manager(label_prefix=prefix, docker_client=proxied)
    # The image list is no op of its own in the proxy: "any" catches it (the only call).
    proxy.add_rule(FaultRule(op="any", action="fail", status=500, message="list broke"))
    assert manager.run_dangling_image_cleanup() == []
    (event,) = sentry_events.with_source("dangling_image_cleanup_scan")
    assert event["level"] == "error"


def test_a_removal_failure_is_reported_as_dangling_image_remove(
    make_manager: Callable[..., Any],
    images: Images,
    prefix: str,
    proxy: Any,
    proxied: docker.APIClient,
    sentry_events: CapturedEvents,
) -> None:
    from faultproxy import FaultRule  # noqa: PLC0415

    old, _ = _pair(images, f"dockyard-test-rmfail-{prefix[-8:]}:1", {f"{prefix}.managed": "true"})
    manager = make_manager(label_prefix=prefix, docker_client=proxied)
    proxy.add_rule(FaultRule(op="image_remove", action="fail", status=500, message="rm broke"))
    assert manager.run_dangling_image_cleanup() == []
    (event,) = sentry_events.with_source("dangling_image_remove")
    assert event["level"] == "warning"
    assert event["extra"]["imageId"] == old
    assert images.exists(old)


def test_reap_images_on_the_command_line(
    images: Images,
    prefix: str,
    instance_id: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = _pair(images, f"dockyard-test-cli-{prefix[-8:]}:1", {f"{prefix}.managed": "true"})
    monkeypatch.setattr(sys, "argv", ["dockyard"])
    status = cli_main(["reap", "--images", "--label-prefix", prefix, "--instance", instance_id])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "removed 1 dangling image(s)" in out
    assert old.removeprefix("sha256:")[:12] in out
    assert not images.exists(old) and images.exists(new)
