"""`RouterConfig` / `ProjectConfig`: defaults, `from_env`, validation and JSON round trips."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from dockyard import ConfigError, ProjectConfig, RouterConfig

GIB = 1024**3

SPEC_DEFAULTS: dict[str, Any] = {
    "worker_image": "ghcr.io/mongrel-intelligence/cascade-worker:latest",
    "max_workers": 3,
    "worker_memory_mb": 4096,
    "worker_timeout_s": 1800,
    "slot_wait_timeout_s": 300,
    "docker_network": "bridge",
    "redis_url": "redis://localhost:6379",
    "snapshot_enabled": False,
    "snapshot_default_ttl_s": 86400,
    "snapshot_max_count": 5,
    "snapshot_max_size_bytes": 10 * GIB,
    "kill_buffer_s": 120,
    "stop_grace_s": 15,
    "image_pull_timeout_s": 300,
    "log_tail_lines": 50,
    "launch_concurrency": 8,
    "label_prefix": "cascade",
    "container_name_prefix": "cascade-worker-",
    "snapshot_image_prefix": "cascade-snapshot-",
}

ALL_VARS = (
    "WORKER_IMAGE",
    "MAX_WORKERS",
    "WORKER_MEMORY_MB",
    "WORKER_TIMEOUT_MS",
    "SLOT_WAIT_TIMEOUT_MS",
    "DOCKER_NETWORK",
    "REDIS_URL",
    "SNAPSHOT_ENABLED",
    "SNAPSHOT_DEFAULT_TTL_MS",
    "SNAPSHOT_MAX_COUNT",
    "SNAPSHOT_MAX_SIZE_BYTES",
    "CASCADE_ROUTER_INSTANCE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ALL_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("source", ["empty-mapping", "process-env"])
def test_from_env_defaults(clean_env: pytest.MonkeyPatch, source: str) -> None:
    config = RouterConfig.from_env({}) if source == "empty-mapping" else RouterConfig.from_env()
    for name, expected in SPEC_DEFAULTS.items():
        assert getattr(config, name) == expected, name
    assert config.router_instance_id == socket.gethostname()
    assert config == RouterConfig()


def test_durations_are_seconds_as_floats() -> None:
    config = RouterConfig.from_env({"WORKER_TIMEOUT_MS": "1500"})
    assert isinstance(config.worker_timeout_s, float)
    assert config.worker_timeout_s == 1.5


# --------------------------------------------------------------------------- variables


@pytest.mark.parametrize(
    ("var", "raw", "field", "expected"),
    [
        ("WORKER_IMAGE", "registry.local:5000/team/worker:2", "worker_image", None),
        ("MAX_WORKERS", "7", "max_workers", 7),
        ("MAX_WORKERS", " 4 ", "max_workers", 4),
        ("MAX_WORKERS_PER_PROJECT", "2", "max_workers_per_project", 2),
        ("WORKER_MEMORY_MB", "512", "worker_memory_mb", 512),
        ("WORKER_MEMORY_MB", "6", "worker_memory_mb", 6),
        ("WORKER_TIMEOUT_MS", "60000", "worker_timeout_s", 60.0),
        ("WORKER_TIMEOUT_MS", "2500", "worker_timeout_s", 2.5),
        ("SLOT_WAIT_TIMEOUT_MS", "250", "slot_wait_timeout_s", 0.25),
        ("DOCKER_NETWORK", "cascade-net", "docker_network", None),
        ("REDIS_URL", "redis://redis:6380/2", "redis_url", None),
        ("SNAPSHOT_DEFAULT_TTL_MS", "3600000", "snapshot_default_ttl_s", 3600.0),
        ("SNAPSHOT_MAX_COUNT", "0", "snapshot_max_count", 0),
        ("SNAPSHOT_MAX_COUNT", "12", "snapshot_max_count", 12),
        ("SNAPSHOT_MAX_SIZE_BYTES", "1073741824", "snapshot_max_size_bytes", GIB),
        ("CASCADE_ROUTER_INSTANCE", "router-a", "router_instance_id", None),
    ],
)
def test_each_variable(
    clean_env: pytest.MonkeyPatch, var: str, raw: str, field: str, expected: Any
) -> None:
    want = raw if expected is None else expected
    assert getattr(RouterConfig.from_env({var: raw}), field) == want
    clean_env.setenv(var, raw)
    config = RouterConfig.from_env()
    assert getattr(config, field) == want
    # Nothing else moved.
    others = {f.name for f in dataclasses.fields(RouterConfig)} - {field}
    default = RouterConfig(router_instance_id=config.router_instance_id)
    for name in others - {"router_instance_id"}:
        assert getattr(config, name) == getattr(default, name), name


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [("true", True), ("True", False), ("TRUE", False), ("1", False), ("yes", False),
     ("false", False), ("on", False)],
)  # fmt: skip
def test_snapshot_enabled_only_for_exactly_true(raw: str, enabled: bool) -> None:
    assert RouterConfig.from_env({"SNAPSHOT_ENABLED": raw}).snapshot_enabled is enabled


def test_blank_variables_mean_the_default() -> None:
    config = RouterConfig.from_env({"MAX_WORKERS": "", "WORKER_TIMEOUT_MS": "   "})
    assert config.max_workers == 3
    assert config.worker_timeout_s == 1800


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("MAX_WORKERS", "0"),
        ("MAX_WORKERS", "-2"),
        ("MAX_WORKERS", "abc"),
        ("MAX_WORKERS", "2.5"),
        ("MAX_WORKERS", "1_000"),
        ("MAX_WORKERS_PER_PROJECT", "0"),
        ("MAX_WORKERS_PER_PROJECT", "two"),
        ("WORKER_MEMORY_MB", "5"),
        ("WORKER_MEMORY_MB", "lots"),
        ("WORKER_TIMEOUT_MS", "-1"),
        ("WORKER_TIMEOUT_MS", "0"),
        ("WORKER_TIMEOUT_MS", "nan"),
        ("WORKER_TIMEOUT_MS", "inf"),
        ("WORKER_TIMEOUT_MS", "1e30"),
        ("WORKER_TIMEOUT_MS", "10s"),
        ("SLOT_WAIT_TIMEOUT_MS", "0"),
        ("SNAPSHOT_DEFAULT_TTL_MS", "-5"),
        ("SNAPSHOT_MAX_COUNT", "-1"),
        ("SNAPSHOT_MAX_SIZE_BYTES", "10GiB"),
        ("WORKER_IMAGE", "Not An Image!"),
        ("CASCADE_ROUTER_INSTANCE", "bad\x00id"),
    ],
)
def test_invalid_variable_raises_config_error_naming_it(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        RouterConfig.from_env({var: raw})
    assert info.value.name == var
    assert str(info.value).startswith(f"{var}: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_workers", 0),
        ("max_workers", True),
        ("max_workers", "3"),
        ("max_workers_per_project", 0),
        ("max_workers_per_project", True),
        ("max_workers_per_project", 1.5),
        ("worker_memory_mb", 5),
        ("worker_timeout_s", 0),
        ("worker_timeout_s", -1.0),
        ("worker_timeout_s", float("inf")),
        ("worker_timeout_s", 1e300),
        ("stop_grace_s", float("nan")),
        ("kill_buffer_s", -1),
        ("kill_buffer_s", "120"),
        ("launch_concurrency", 0),
        ("log_tail_lines", -1),
        ("outcome_history", 0),
        ("pids_limit", 0),
        ("worker_image", ""),
        ("worker_image", "team/UPPER"),
        ("docker_network", " "),
        ("router_instance_id", ""),
        ("label_prefix", ""),
        ("container_name_prefix", ""),
        ("container_name_prefix", "-leading-dash"),
        ("container_name_prefix", "has space-"),
        ("snapshot_image_prefix", "Upper-"),
        ("snapshot_image_prefix", ""),
        ("snapshot_enabled", "true"),
    ],
)
def test_constructor_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RouterConfig(**{field: value})
    assert info.value.name == field


@pytest.mark.parametrize(
    ("image", "valid"),
    [
        ("busybox", True),
        ("busybox:1.36", True),
        ("ghcr.io/mongrel-intelligence/cascade-worker:latest", True),
        ("localhost:5000/team/worker:v2", True),
        ("registry.example/team/worker@sha256:" + "ab" * 32, True),
        ("0123456789ab", True),
        ("Busybox", False),
        ("team/UPPER", False),
        ("worker:tägé", False),
        ("worker:", False),
        ("has space", False),
        ("worker@sha256:short", False),
        ("-leading", False),
    ],
)
def test_worker_image_reference_check(image: str, valid: bool) -> None:
    if valid:
        assert RouterConfig(worker_image=image).worker_image == image
    else:
        with pytest.raises(ConfigError) as info:
            RouterConfig(worker_image=image)
        assert info.value.name == "worker_image"


def test_per_project_caps_default_to_none() -> None:
    assert RouterConfig().max_workers_per_project is None
    assert ProjectConfig("p").max_workers is None
    assert ProjectConfig.from_dict({"id": "p", "max_workers": 2}).max_workers == 2
    assert RouterConfig.from_dict({"max_workers_per_project": 3}).max_workers_per_project == 3


def test_zero_kill_buffer_and_no_pids_limit_are_allowed() -> None:
    config = RouterConfig(kill_buffer_s=0, pids_limit=None)
    assert config.kill_buffer_s == 0
    assert config.pids_limit is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "ProjectConfig.id"),
        ({"id": "p", "snapshot_ttl_s": 0}, "ProjectConfig.snapshot_ttl_s"),
        ({"id": "p", "watchdog_timeout_s": -3}, "ProjectConfig.watchdog_timeout_s"),
        ({"id": "p", "watchdog_timeout_s": float("nan")}, "ProjectConfig.watchdog_timeout_s"),
        ({"id": "p", "snapshot_enabled": "yes"}, "ProjectConfig.snapshot_enabled"),
        ({"id": "p", "worker_image_digest": 42}, "ProjectConfig.worker_image_digest"),
        ({"id": "p", "max_workers": 0}, "ProjectConfig.max_workers"),
        ({"id": "p", "max_workers": "2"}, "ProjectConfig.max_workers"),
        ({"id": "p", "max_workers": False}, "ProjectConfig.max_workers"),
    ],
)
def test_project_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ProjectConfig(**kwargs)
    assert info.value.name == field


# --------------------------------------------------------------------------- JSON


def test_router_config_json_round_trip() -> None:
    config = RouterConfig(
        worker_image="registry.local/worker@sha256:" + "0" * 64,
        max_workers=5,
        worker_timeout_s=12.5,
        snapshot_enabled=True,
        router_instance_id="router-7",
        pids_limit=None,
    )
    assert RouterConfig.from_dict(config.to_dict()) == config
    assert RouterConfig.from_json(config.to_json()) == config
    assert config.to_dict()["worker_timeout_s"] == 12.5


def test_router_config_from_dict_fills_defaults_and_validates() -> None:
    config = RouterConfig.from_dict({"max_workers": 2, "router_instance_id": "r"})
    assert config.max_workers == 2
    assert config.worker_memory_mb == 4096
    with pytest.raises(ConfigError) as info:
        RouterConfig.from_dict({"max_workers": 0})
    assert info.value.name == "max_workers"


@pytest.mark.parametrize(
    ("kvs", "name"),
    [
        # dataclasses-json alone would coerce each of these without a word.
        ({"snapshot_enabled": "false"}, "snapshot_enabled"),
        ({"max_workers": "2"}, "max_workers"),
        ({"max_workers": 2.5}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"worker_image": 7}, "worker_image"),
        ({"worker_timeout_s": "60"}, "worker_timeout_s"),
        ({"pids_limit": "none"}, "pids_limit"),
        ({"max_worker": 3}, "max_worker"),
    ],
)
def test_router_config_from_dict_refuses_wrong_json_types(kvs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RouterConfig.from_dict(kvs)
    assert info.value.name == name


def test_project_config_from_json_refuses_wrong_json_types() -> None:
    with pytest.raises(ConfigError) as info:
        ProjectConfig.from_json('{"id": "p", "snapshot_enabled": "false"}')
    assert info.value.name == "ProjectConfig.snapshot_enabled"
    with pytest.raises(ConfigError):
        ProjectConfig.from_json("[1, 2]")


def test_json_numbers_fit_float_fields() -> None:
    config = RouterConfig.from_json('{"worker_timeout_s": 90, "pids_limit": null}')
    assert config.worker_timeout_s == 90.0
    assert config.pids_limit is None


def test_project_config_json_round_trip() -> None:
    project = ProjectConfig(
        "p-1",
        repo_full_name="acme/app",
        snapshot_enabled=False,
        snapshot_ttl_s=60.0,
        watchdog_timeout_s=600.0,
        worker_image="registry.local/acme/worker:3",
        worker_image_status="verified",
        worker_image_digest="registry.local/acme/worker@sha256:" + "1" * 64,
    )
    assert ProjectConfig.from_json(project.to_json()) == project
    assert ProjectConfig.from_dict({"id": "p-2"}) == ProjectConfig("p-2")
    assert ProjectConfig("p-2").to_dict()["snapshot_enabled"] is None


def test_configs_are_frozen() -> None:
    config = RouterConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_workers = 10  # type: ignore[misc]
