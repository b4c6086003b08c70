"""The one table from engine failures to typed errors: Docker's and Podman's answers alike."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from dockyard._errors import (
    ContainerNotFoundError,
    DockerUnavailableError,
    EngineConflictError,
    EngineError,
    EngineNotFoundError,
    EngineServerError,
    EngineTimeoutError,
    ImageNotFoundError,
    InvalidReferenceError,
    NameInUseError,
    NetworkNotFoundError,
    RemovalInProgressError,
    translate,
)
from dockyard.testing import api_error

ANSWERS = [
    # Docker
    (404, "No such image: worker:1", ImageNotFoundError),
    (404, "No such container: abc", ContainerNotFoundError),
    (404, "network cascade-net not found", NetworkNotFoundError),
    (409, 'Conflict. The container name "/w" is already in use by container "x"', NameInUseError),
    (409, "removal of container abc is already in progress", RemovalInProgressError),
    (400, "invalid reference format", InvalidReferenceError),
    (404, "page not found", EngineNotFoundError),
    (409, "something else", EngineConflictError),
    (500, "disk full", EngineServerError),
    (400, "bad parameter", EngineError),
    # Podman: the same refusals as 500 with a message
    (500, 'the container name "w" is already in use by abc', NameInUseError),
    (500, "worker:1: image not known", ImageNotFoundError),
    (500, "unable to find network with name or ID cascade-net", NetworkNotFoundError),
    (500, "no container with ID abc found in database: no such container", ContainerNotFoundError),
    (500, "normalizing image: invalid reference format", InvalidReferenceError),
    (
        500,
        'normalizing image: parsing reference "Busybox:latest": repository name must be lowercase',
        InvalidReferenceError,
    ),
]


@pytest.mark.parametrize(("status", "message", "expected"), ANSWERS)
def test_each_answer_becomes_its_type(status: int, message: str, expected: type) -> None:
    typed = translate("create", api_error(status, message))
    assert type(typed) is expected
    assert isinstance(typed, EngineError) and typed.status_code == status


def test_no_answer_is_unavailability_and_a_slow_one_a_timeout() -> None:
    assert isinstance(
        translate("inspect", requests.exceptions.ConnectionError("refused")), DockerUnavailableError
    )
    assert isinstance(translate("inspect", requests.exceptions.ReadTimeout()), EngineTimeoutError)
    assert isinstance(translate("inspect", api_error(503, "unavailable")), DockerUnavailableError)


def test_typed_errors_and_bugs_pass_through_unchanged() -> None:
    typed = ImageNotFoundError("create", 404, "No such image: x")
    bug = KeyError("bug")
    assert translate("create", typed) is typed
    assert translate("create", bug) is bug
    assert type(translate("x", docker.errors.DockerException("odd"))) is EngineError
