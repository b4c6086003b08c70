"""`refused_control`: which set control an engine refusal is about, from the engine's own
words. The messages are the engines' texts, as docker-py's `explanation` gave them for a
busybox container on Docker 20.10.24 and 28.5.2 (runc below both): where the two differ,
both are here. And the security options an engine would not honour without a word (an
AppArmor profile or SELinux label on an engine without the module), refused before the
create."""

from __future__ import annotations

import pytest

from dockyard import (
    ContainerManager,
    ContainerSettings,
    Mount,
    RouterConfig,
    Ulimit,
    WorkerJob,
    WorkerSpawnError,
)
from dockyard._docker_settings import (
    name_refused_control,
    refused_control,
    unhonoured_security_options,
)
from dockyard._errors import EngineError
from dockyard._launch_failures import as_spawn_error
from dockyard.testing import DEFAULT_IMAGE, FakeDockerAPI, RecordingReporter

MIB = 1024 * 1024
RUNC_20 = (
    "failed to create shim task: OCI runtime create failed: runc create failed: unable to "
    "start container process: "
)
RUNC_28 = f"failed to create task for container: {RUNC_20}error during container init: "

# (settings, engine message, the control it names)
NAMED: list[tuple[ContainerSettings, str, str]] = [
    (
        ContainerSettings(gpus=1),
        'could not select device driver "" with capabilities: [[gpu]]',  # 20.10 and 28
        "the GPU request (gpus=1)",
    ),
    (
        ContainerSettings(user="nosuchuser"),
        "unable to find user nosuchuser: no matching entries in passwd file",  # both
        "the user (user='nosuchuser')",
    ),
    (
        ContainerSettings(user="1000:nosuchgroup"),
        "unable to find group nosuchgroup: no matching entries in group file",  # both
        "the user (user='1000:nosuchgroup')",
    ),
    (
        ContainerSettings(security_opt=("seccomp=/no/such/file.json",)),
        "Decoding seccomp profile failed: invalid character '/' looking for beginning of value",
        "the security options (security_opt=('seccomp=/no/such/file.json',))",
    ),
    (
        ContainerSettings(security_opt=("apparmor=x", "label=disable")),
        'invalid --security-opt 2: "nosuchkey=x"',  # both; the option's own words
        "the security options (security_opt=('apparmor=x', 'label=disable'))",
    ),
    (
        ContainerSettings(cpus=0.5, cpuset_cpus="5"),
        "Requested CPUs are not available - requested 5, available: 0-1",  # both
        "the CPU set (cpuset_cpus='5')",
    ),
    (
        ContainerSettings(cpuset_cpus="0-a"),
        "Invalid value 0-a for cpuset cpus: invalid format: 0-a",  # both
        "the CPU set (cpuset_cpus='0-a')",
    ),
    (
        ContainerSettings(cpus=8.0, cpuset_cpus="0"),
        "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available",  # 20.10
        "the CPU limit (cpus=8.0)",
    ),
    (
        ContainerSettings(cpus=8.0),
        "range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available",  # 28
        "the CPU limit (cpus=8.0)",
    ),
    (
        ContainerSettings(mounts=(Mount("bind", "/in", source="/no/such/dir"),)),
        'invalid mount config for type "bind": bind source path does not exist: /no/such/dir',
        "a mount (mounts=['/in'])",
    ),
    (
        ContainerSettings(mounts=(Mount("tmpfs", "/bin/sh"),)),
        f'{RUNC_20}error during container init: error mounting "tmpfs" to rootfs at '
        '"/bin/sh": mount tmpfs:/bin/sh (via /proc/self/fd/6), flags: 0xe: not a directory: '
        "unknown: Are you trying to mount a directory onto a file (or vice-versa)? Check if "
        "the specified host path exists and is the expected type",
        "a mount (mounts=['/bin/sh'])",
    ),
    (
        ContainerSettings(mounts=(Mount("tmpfs", "/bin/sh"),)),
        f'{RUNC_28}error mounting "tmpfs" to rootfs at "/bin/sh": mount src=tmpfs, '
        "dst=/bin/sh, dstFd=/proc/thread-self/fd/14, flags=MS_NOSUID|MS_NODEV|MS_NOEXEC, "
        "data=mode=0755: not a directory: Are you trying to mount a directory onto a file "
        "(or vice-versa)? Check if the specified host path exists and is the expected type",
        "a mount (mounts=['/bin/sh'])",
    ),
    (
        ContainerSettings(cap_add=("CAP_NOSUCH",), cap_drop=("ALL",)),
        'invalid CapAdd: unknown capability: "CAP_NOSUCH"',  # both
        "the added capabilities (cap_add=('CAP_NOSUCH',))",
    ),
    (
        ContainerSettings(cap_add=("NET_ADMIN",), cap_drop=("NOSUCH",)),
        'invalid CapDrop: unknown capability: "CAP_NOSUCH"',  # both
        "the dropped capabilities (cap_drop=('NOSUCH',))",
    ),
    (
        ContainerSettings(ulimits=(Ulimit("nofile", 1 << 30, 1 << 30),)),
        f"{RUNC_20}error during container init: error setting rlimits for ready process: "
        "error setting rlimit type 7: operation not permitted: unknown",
        f"a ulimit (ulimits=(Ulimit(name='nofile', soft={1 << 30}, hard={1 << 30}),))",
    ),
    (
        ContainerSettings(ulimits=(Ulimit("nofile", 1 << 30, 1 << 30),)),
        f"{RUNC_28}error setting rlimits for ready process: error setting rlimit type 7: "
        "operation not permitted",
        f"a ulimit (ulimits=(Ulimit(name='nofile', soft={1 << 30}, hard={1 << 30}),))",
    ),
    (
        ContainerSettings(working_dir="/bin/sh"),
        "Cannot mkdir: /bin/sh is not a directory",  # both, at create
        "the working directory (working_dir='/bin/sh')",
    ),
]


@pytest.mark.parametrize(("settings", "message", "named"), NAMED)
def test_an_engine_refusal_names_the_set_control(
    settings: ContainerSettings, message: str, named: str
) -> None:
    assert refused_control(message, settings) == named


# (settings, engine message): the message is about none of the set controls.
NOT_NAMED: list[tuple[ContainerSettings | None, str]] = [
    # A container name, an image name: `mount` and `volume` are words of the message, not
    # a refused mount (the old broad markers named the mount for both).
    (
        ContainerSettings(mounts=(Mount("tmpfs", "/scratch"),)),
        'Conflict. The container name "/cascade-worker-mount-1" is already in use by '
        'container "ad96f1858c01". You have to remove (or rename) that container to be able '
        "to reuse that name.",
    ),
    (
        ContainerSettings(mounts=(Mount("volume", "/cache", source="pip-cache"),)),
        "No such image: volume-tools:latest",
    ),
    # runc's words about a mount, but not one of the set mounts.
    (
        ContainerSettings(mounts=(Mount("tmpfs", "/scratch"),)),
        f'{RUNC_28}error mounting "tmpfs" to rootfs at "/bin/sh": not a directory',
    ),
    # A failure of the command, whatever else is set.
    (
        ContainerSettings(
            user="1000:1000",
            working_dir="/tmp",
            init=True,
            ulimits=(Ulimit("nofile", 64, 64),),
            mounts=(Mount("tmpfs", "/scratch"),),
            cap_drop=("ALL",),
            security_opt=("no-new-privileges",),
        ),
        f'{RUNC_28}exec: "nosuchcmd": executable file not found in $PATH',
    ),
    # A seccomp failure is not blamed on an AppArmor option.
    (
        ContainerSettings(security_opt=("apparmor=my-profile",)),
        "Decoding seccomp profile failed: invalid character '/' looking for beginning of value",
    ),
    # The CPU set's refusal is not the CPU limit's, the GPU's not anything else's.
    (
        ContainerSettings(cpus=0.5),
        "Requested CPUs are not available - requested 5, available: 0-1",
    ),
    (
        ContainerSettings(cpus=0.5, user="1000", cap_add=("SYS_ADMIN",)),
        'could not select device driver "" with capabilities: [[gpu]]',
    ),
    # A working directory's path in a message about something else.
    (
        ContainerSettings(working_dir="/bin/sh"),
        f'{RUNC_28}exec: "/bin/sh": permission denied',
    ),
    (None, 'could not select device driver "" with capabilities: [[gpu]]'),
]


@pytest.mark.parametrize(("settings", "message"), NOT_NAMED)
def test_an_engine_refusal_about_no_set_control_names_none(
    settings: ContainerSettings | None, message: str
) -> None:
    assert refused_control(message, settings) is None


def test_the_spawn_error_says_the_control_first_and_keeps_the_engines_words() -> None:
    engine = EngineError("launch", 500, "unable to find user x: no matching entries in passwd")
    spawn = as_spawn_error(engine)
    named = name_refused_control(spawn, ContainerSettings(user="x"))
    assert isinstance(named, WorkerSpawnError)
    assert str(named) == (
        "the engine refused the user (user='x'): Docker launch failed (500): unable to find "
        "user x: no matching entries in passwd"
    )
    assert named.status_code == 500
    assert named.__cause__ is spawn.__cause__
    assert name_refused_control(spawn, ContainerSettings(cpus=1.0)) is spawn
    other = ValueError("not a spawn error")
    assert name_refused_control(other, ContainerSettings(user="x")) is other


# `docker info` SecurityOptions of Docker 20.10.24 and 28.5.2 on this host (no AppArmor,
# no SELinux), and of an engine with both.
PLAIN_20 = ["name=seccomp,profile=default"]
PLAIN_28 = ["name=seccomp,profile=builtin"]
BOTH = ["name=apparmor", "name=seccomp,profile=default", "name=selinux"]


@pytest.mark.parametrize("engine", [PLAIN_20, PLAIN_28], ids=["20.10", "28"])
def test_a_profile_the_engine_has_no_module_for_is_not_honoured(engine: list[str]) -> None:
    reason = unhonoured_security_options(("apparmor=my-profile", "label=type:svirt_t"), engine)
    assert reason == (
        "'apparmor=my-profile' needs AppArmor; 'label=type:svirt_t' needs SELinux, which the "
        f"engine does not have (its security options: {engine[0]}): it would start the "
        "worker without the option"
    )
    assert unhonoured_security_options(("label:level:s0",), engine) is not None
    # What needs no module: turning it off, seccomp, no-new-privileges.
    for honoured in (
        ("apparmor=unconfined", "label=disable", "label:disable"),
        ("seccomp=unconfined", "no-new-privileges", "systempaths=unconfined"),
    ):
        assert unhonoured_security_options(honoured, engine) is None


def test_an_engine_with_the_modules_honours_the_profiles() -> None:
    options = ("apparmor=my-profile", "label=type:svirt_t")
    assert unhonoured_security_options(options, BOTH) is None
    assert unhonoured_security_options(options, ["name=apparmor"]) is not None  # no SELinux


def test_a_spawn_asking_for_a_module_the_engine_lacks_is_refused_before_the_create() -> None:
    api = FakeDockerAPI(images={DEFAULT_IMAGE})
    config = RouterConfig(
        worker_image=DEFAULT_IMAGE,
        router_instance_id="security-unit",
        job_settings_allowed=frozenset({"security_opt"}),
    )
    profile = ContainerSettings(security_opt=("apparmor=my-profile",))
    with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as manager:
        with pytest.raises(WorkerSpawnError) as err:
            manager.spawn_worker(WorkerJob("a", "t", {}, container=profile))
        assert str(err.value) == (
            "the engine refused the security options (security_opt=('apparmor=my-profile',)): "
            "'apparmor=my-profile' needs AppArmor, which the engine does not have (its "
            "security options: name=seccomp,profile=default): it would start the worker "
            "without the option"
        )
        assert api.calls_of("create_container") == []
        assert manager.get_active_worker_count() == 0
        # Unconfined needs no module; an engine with AppArmor takes the profile.
        off = ContainerSettings(security_opt=("apparmor=unconfined",))
        manager.spawn_worker(WorkerJob("b", "t", {}, container=off))
        api.security_options = BOTH
        with ContainerManager(config, docker_client=api, reporter=RecordingReporter()) as other:
            other.spawn_worker(WorkerJob("c", "t", {}, container=profile))
        assert len(api.calls_of("create_container")) == 2
