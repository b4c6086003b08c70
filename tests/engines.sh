#!/usr/bin/env bash
# Newer engines for the integration tests, each in its own network namespace: Docker 28
# and Podman 5 from a Debian forky root, Docker 26 from a Debian trixie root (debootstrap).
#
#   tests/engines.sh build [NAME…]    # build the engines' roots, all by default (done by
#                                     # start when missing)
#   tests/engines.sh start docker28   # reuse it when it answers, else start it; prints DOCKER_HOST
#   tests/engines.sh start docker26   # the same for Docker 26
#   tests/engines.sh start podman5    # Podman's Docker-compatible API socket; prints DOCKER_HOST
#   tests/engines.sh host NAME        # print the engine's unix:// socket URL
#   tests/engines.sh netns NAME       # print the engine's network namespace
#   tests/engines.sh exec NAME CMD…   # run CMD on the host's filesystem inside the engine's
#                                     # network namespace (its 127.0.0.1 is the engine's)
#   tests/engines.sh run NAME CMD…    # the same with DOCKER_HOST set to the engine, for tests
#   tests/engines.sh stop NAME        # stop it (pid file), clean its namespace and run dir
#   tests/engines.sh stop-all
#
# Run as root. Nothing here touches the host's engine: each engine runs in a network
# namespace of its own (a second dockerd in the host's deletes the first one's docker0),
# in a private mount namespace that pivot_roots into its root (with a plain chroot,
# `docker exec` and `docker top` see the host's filesystem and processes). The socket
# directory /run/dyengine-NAME is bound from the host; the roots live under
# /var/lib/dockyard-engines/root-SUITE and the data roots under /var/lib/dockyard-engines/NAME
# (DOCKYARD_ENGINES_DIR moves them). Everything the script creates or caches is under that
# directory, /run/dyengine-* and /tmp/dyengine-*.log.
set -euo pipefail

BASE="${DOCKYARD_ENGINES_DIR:-/var/lib/dockyard-engines}"  # the roots, data roots, build logs
DEBOOTSTRAP_INCLUDE=ca-certificates
WAIT_S=90
ENGINES=(docker28 podman5 docker26)

# The Debian suite whose root an engine runs from.
suite_of() {
    case "$1" in
        docker28 | podman5) echo forky ;;
        docker26) echo trixie ;;
    esac
}

# Selects one root for the functions below: ROOT, ROOT_DONE, SUITE, the packages it is
# built with and the binaries its engines need from it.
use_root() {
    SUITE="$1"
    ROOT="${BASE}/root-${SUITE}"
    ROOT_DONE="${ROOT}/.dockyard-engines-root-complete"
    case "${SUITE}" in
        forky)
            # netavark 1.14+ needs nft; Podman runs with runc (crun refuses this host's
            # hybrid cgroup layout).
            ROOT_PACKAGES=(docker.io busybox-static ca-certificates iptables podman netavark
                aardvark-dns conmon catatonit nftables crun runc)
            ROOT_BINARIES=(dockerd containerd runc podman conmon busybox nft iptables)
            ;;
        trixie)
            ROOT_PACKAGES=(docker.io busybox-static ca-certificates iptables runc)
            ROOT_BINARIES=(dockerd containerd runc busybox iptables)
            ;;
        *) die "no root for suite '${SUITE}'" ;;
    esac
}

die() {
    echo "engines.sh: $*" >&2
    exit 1
}

log() {
    echo "engines.sh: $*" >&2
}

# The Debian mirror the host's own apt sources use (deb822 or one-line format).
host_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri="$(awk '
            /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
            /^URIs:/ && deb { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }
        ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    fi
    if [[ -z "${uri}" && -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|ftp):.*\/debian\/?$/) { print $i; exit } }' \
            /etc/apt/sources.list || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

check_name() {
    local name
    for name in "${ENGINES[@]}"; do
        [[ "${1:-}" == "${name}" ]] && return 0
    done
    die "unknown engine '${1:-}' (known: ${ENGINES[*]})"
}

netns_of() { echo "dyeng-$1"; }
run_dir_of() { echo "/run/dyengine-$1"; }
socket_of() {
    case "$1" in
        docker*) echo "$(run_dir_of "$1")/docker.sock" ;;
        podman*) echo "$(run_dir_of "$1")/podman.sock" ;;
    esac
}
host_of() { echo "unix://$(socket_of "$1")"; }
pidfile_of() { echo "$(run_dir_of "$1")/engine.pid"; }
state_of() { echo "${BASE}/$1"; }
log_of() { echo "/tmp/dyengine-$1.log"; }

answers() {
    DOCKER_HOST="$(host_of "$1")" timeout 10 docker info >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
# The root

# Runs a command chrooted into the root with fresh /proc, /dev and /sys in a private mount
# namespace (they go away with it) and, unless NET=1, with no network at all: a package's
# maintainer script can then start nothing that reaches the host's network (policy-rc.d
# refuses service starts as well).
in_root() {
    local net_flag=(--net)
    [[ "${NET:-0}" == "1" ]] && net_flag=()
    unshare "${net_flag[@]}" --mount --propagation private -- bash -c '
        set -e
        root="$1"; shift
        mount -t proc proc "${root}/proc"
        mount -t sysfs sysfs "${root}/sys"
        mount --rbind /dev "${root}/dev"
        exec chroot "${root}" "$@"
    ' in_root "${ROOT}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# Whether an engine of the selected root runs.
any_engine_running() {
    local name pid
    for name in "${ENGINES[@]}"; do
        [[ "$(suite_of "${name}")" == "${SUITE}" ]] || continue
        pid="$(cat "$(pidfile_of "${name}")" 2>/dev/null || true)"
        [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && return 0
    done
    return 1
}

# What a finished root records: the suite and the package list it was built with.
root_recipe() {
    echo "${SUITE} ${ROOT_PACKAGES[*]}"
}

# The root's build, step by step (its output goes to the build log).
root_build_steps() {
    local mirror="$1" script="${SUITE}"
    # A suite newer than the host's debootstrap (forky on Debian 12) is built with the
    # 'sid' script.
    [[ -e "/usr/share/debootstrap/scripts/${SUITE}" ]] || script=sid
    debootstrap --variant=minbase --include="${DEBOOTSTRAP_INCLUDE}" \
        "${SUITE}" "${ROOT}" "${mirror}" "${script}" || return 1
    # No maintainer script may start a service in the root.
    printf '#!/bin/sh\nexit 101\n' >"${ROOT}/usr/sbin/policy-rc.d" || return 1
    chmod 755 "${ROOT}/usr/sbin/policy-rc.d" || return 1
    # forky's InRelease carries an expired Valid-Until on this mirror (trixie's is current).
    printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
        'Acquire::Check-Valid-Until "false";' >"${ROOT}/etc/apt/apt.conf.d/90dockyard-engines" \
        || return 1
    cp /etc/resolv.conf "${ROOT}/etc/resolv.conf" || return 1
    NET=1 in_root apt-get -qq update || return 1
    # Download with the network, install (maintainer scripts) without it.
    NET=1 in_root apt-get install -y -qq --download-only "${ROOT_PACKAGES[@]}" || return 1
    in_root apt-get install -y -qq "${ROOT_PACKAGES[@]}" || return 1
    in_root apt-get clean || return 1
    # What the engines need from the root, checked before it is marked complete.
    local binary
    for binary in "${ROOT_BINARIES[@]}"; do
        [[ -x "${ROOT}/usr/bin/${binary}" || -x "${ROOT}/usr/sbin/${binary}" || -x "${ROOT}/bin/${binary}" ]] \
            || { echo "the root has no ${binary}"; return 1; }
    done
}

build_root() {
    if [[ -e "${ROOT_DONE}" && "$(head -1 "${ROOT_DONE}")" == "$(root_recipe)" ]]; then
        return 0
    fi
    local started=${SECONDS}
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    if [[ -e "${ROOT}" ]]; then
        # A root without the completion mark is what an interrupted build left, one with
        # another recipe is out of date: start over.
        any_engine_running && die "${ROOT} is incomplete or out of date but an engine still runs from it; stop its engines first"
        log "removing the incomplete or out-of-date root ${ROOT}"
        rm -rf --one-file-system "${ROOT}"
    fi
    mkdir -p "${BASE}"
    local mirror
    mirror="$(host_mirror)"
    local build_log="${BASE}/root-${SUITE}-build.log"
    log "building the ${SUITE} root in ${ROOT} from ${mirror} (log ${build_log})"
    # (errexit does not apply inside a command list that ends in ||: each step says so.)
    root_build_steps "${mirror}" >"${build_log}" 2>&1 || {
        tail -40 "${build_log}" >&2
        die "building the ${SUITE} root failed (log ${build_log})"
    }
    { root_recipe; date -u +%FT%TZ; } >"${ROOT_DONE}"
    log "${SUITE} root built in $((SECONDS - started))s ($(du -sh --one-file-system "${ROOT}" | cut -f1))"
}

# The roots of the named engines (all by default), each built once.
build_roots() {
    (($#)) || set -- "${ENGINES[@]}"
    local name
    for name in "$@"; do
        check_name "${name}"
        use_root "$(suite_of "${name}")"
        build_root
    done
}

# Configuration Podman needs on this host (written into a root with Podman before every
# start).
write_root_config() {
    [[ -x "${ROOT}/usr/bin/podman" ]] || return 0
    mkdir -p "${ROOT}/etc/containers"
    # No systemd or journald in the root; cgroupfs on the host's cgroup v1 hierarchy; the
    # host's hard nofile limit is 20000, so Podman's default (1048576) cannot be granted.
    # The file events log is rotated (its older half dropped) at 1 MB by default, which a
    # suite's events pass within minutes; the `/events` streams dockyard follows for exit
    # facts read that file, so it gets room for a whole run and is never rotated under one.
    cat >"${ROOT}/etc/containers/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=96362:96362"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_max_size = "64m"
runtime = "runc"
EOF
    # The test registries listen on 127.0.0.1 (free ports) over plain HTTP: Docker allows
    # 127.0.0.0/8 without TLS, Podman only registries marked insecure. A location without
    # a port matches every port of that host (containers/image's prefix match).
    cat >"${ROOT}/etc/containers/registries.conf" <<'EOF2'
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "127.0.0.1"
insecure = true

[[registry]]
location = "localhost"
insecure = true
EOF2
}

# ---------------------------------------------------------------------------------------
# Engines

engine_command() {
    local name="$1"
    case "${name}" in
        docker*)
            echo "exec dockerd --data-root /var/lib/docker --exec-root /run/docker-exec" \
                "--pidfile /run/dyengine-${name}/dockerd.pid -H unix:///run/dyengine-${name}/docker.sock" \
                "--cgroup-parent /$(netns_of "${name}")"
            ;;
        podman*)
            echo "export PODMAN_IGNORE_CGROUPSV1_WARNING=1;" \
                "exec podman system service --time=0 unix:///run/dyengine-${name}/podman.sock"
            ;;
    esac
}

# The data directory inside the root that holds the engine's state.
data_dir_in_root() {
    case "$1" in
        docker*) echo /var/lib/docker ;;
        podman*) echo /var/lib/containers ;;
    esac
}

start() {
    local name="$1"
    check_name "${name}"
    if answers "${name}"; then
        log "${name} already answers at $(host_of "${name}"); reusing it"
        host_of "${name}"
        return 0
    fi
    use_root "$(suite_of "${name}")"
    build_root
    write_root_config
    # A dead engine's leftovers (pid file, socket, namespace) go first.
    stop_one "${name}" quiet
    local ns run_dir state logf started=${SECONDS}
    ns="$(netns_of "${name}")"
    run_dir="$(run_dir_of "${name}")"
    state="$(state_of "${name}")"
    logf="$(log_of "${name}")"
    ip netns add "${ns}"
    nsenter --net="/var/run/netns/${ns}" ip link set lo up
    mkdir -p "${run_dir}" "${state}/data"
    # In the engine's network namespace and a private mount namespace: the root bound onto
    # itself (containerd wants a mount point), fresh proc and sysfs, the host's cgroups and
    # /dev, tmpfs /run and /tmp, the data root and the socket directory bound from the host;
    # then pivot_root and drop the old root. The engine's pid is this shell's (exec all the
    # way down), written to the pid file before the engine starts.
    setsid nsenter --net="/var/run/netns/${ns}" \
        unshare --mount --propagation private -- bash -c '
        set -e
        root="$1" run_dir="$2" state="$3" data_in_root="$4" engine_cmd="$5"
        mount --bind "${root}" "${root}"
        cd "${root}"
        mount -t proc proc proc
        mount -t sysfs sysfs sys
        mount --rbind /sys/fs/cgroup sys/fs/cgroup
        mount --rbind /dev dev
        mount -t tmpfs -o mode=755 tmpfs run
        mount -t tmpfs -o mode=1777 tmpfs tmp
        mkdir -p ".${run_dir}" ".${data_in_root}" .oldroot
        mount --bind "${run_dir}" ".${run_dir}"
        mount --bind "${state}/data" ".${data_in_root}"
        pivot_root . .oldroot
        exec chroot . /bin/bash -c "
            set -e
            umount -l /.oldroot
            echo \$\$ >${run_dir}/engine.pid
            export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            ${engine_cmd}
        "
    ' start-engine "${ROOT}" "${run_dir}" "${state}" "$(data_dir_in_root "${name}")" \
        "$(engine_command "${name}")" </dev/null >"${logf}" 2>&1 &
    local launcher=$!
    local i
    for ((i = 0; i < WAIT_S; i++)); do
        answers "${name}" && break
        if ! kill -0 "${launcher}" 2>/dev/null; then
            break
        fi
        sleep 1
    done
    if ! answers "${name}"; then
        echo "engines.sh: ${name} did not answer within ${WAIT_S}s; log ${logf}:" >&2
        tail -50 "${logf}" >&2 || true
        stop_one "${name}" quiet
        exit 1
    fi
    # A started engine has no container: an earlier run's (one killed mid-test) would hold
    # names the tests use. Its images stay: they save the pulls and builds.
    local leftovers
    leftovers="$(DOCKER_HOST="$(host_of "${name}")" docker ps -aq 2>/dev/null || true)"
    if [[ -n "${leftovers}" ]]; then
        log "${name}: removing the $(wc -w <<<"${leftovers}") containers an earlier run left"
        # shellcheck disable=SC2086 # one id a word
        DOCKER_HOST="$(host_of "${name}")" docker rm -f ${leftovers} >/dev/null 2>&1 || true
    fi
    log "${name} answers after $((SECONDS - started))s (pid $(cat "$(pidfile_of "${name}")"), log ${logf}," \
        "$(DOCKER_HOST="$(host_of "${name}")" docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}' 2>/dev/null || echo '?'))"
    host_of "${name}"
}

stop_one() {
    local name="$1" quiet="${2:-}"
    check_name "${name}"
    local ns run_dir pidfile pid
    ns="$(netns_of "${name}")"
    run_dir="$(run_dir_of "${name}")"
    pidfile="$(pidfile_of "${name}")"
    pid="$(cat "${pidfile}" 2>/dev/null || true)"
    if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
        if [[ "${name}" == podman* ]]; then
            # Podman's containers outlive its API service (conmon keeps them): stop them
            # while the service still answers.
            local running
            running="$(DOCKER_HOST="$(host_of "${name}")" timeout 20 docker ps -q 2>/dev/null || true)"
            if [[ -n "${running}" ]]; then
                # shellcheck disable=SC2086
                DOCKER_HOST="$(host_of "${name}")" timeout 60 docker kill ${running} >/dev/null 2>&1 || true
            fi
        fi
        kill -TERM "${pid}" 2>/dev/null || true
        local i
        for ((i = 0; i < 30; i++)); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "${pid}" 2>/dev/null; then
            log "${name} (pid ${pid}) did not stop within 30s; killing it"
            kill -KILL "${pid}" 2>/dev/null || true
            sleep 1
        fi
        log "${name} stopped (pid ${pid})"
    elif [[ -z "${quiet}" ]]; then
        log "${name} is not running"
    fi
    # Containers of the engine whose shims outlived it would keep the namespace in use:
    # they are in its network namespace, so end those processes by their pids.
    if [[ -e "/var/run/netns/${ns}" ]]; then
        local left
        left="$(ip netns pids "${ns}" 2>/dev/null || true)"
        if [[ -n "${left}" ]]; then
            # shellcheck disable=SC2086
            kill -KILL ${left} 2>/dev/null || true
            sleep 1
        fi
        ip netns delete "${ns}" 2>/dev/null || true
    fi
    # The engine's mounts lived in its private mount namespace and went with its processes;
    # the run directory (socket, pid file) is plain host files.
    rm -rf --one-file-system "${run_dir}"
}

stop_all() {
    local name
    for name in "${ENGINES[@]}"; do
        stop_one "${name}" quiet
    done
}

case "${1:-}" in
    build)
        shift
        build_roots "$@"
        ;;
    start)
        [[ $# -eq 2 ]] || die "usage: $0 start NAME"
        start "$2"
        ;;
    stop)
        [[ $# -eq 2 ]] || die "usage: $0 stop NAME"
        stop_one "$2"
        ;;
    stop-all) stop_all ;;
    host)
        [[ $# -eq 2 ]] || die "usage: $0 host NAME"
        check_name "$2"
        host_of "$2"
        ;;
    netns)
        [[ $# -eq 2 ]] || die "usage: $0 netns NAME"
        check_name "$2"
        netns_of "$2"
        ;;
    exec)
        [[ $# -ge 3 ]] || die "usage: $0 exec NAME CMD..."
        check_name "$2"
        name="$2"
        shift 2
        [[ -e "/var/run/netns/$(netns_of "${name}")" ]] || die "${name} is not started"
        exec nsenter --net="/var/run/netns/$(netns_of "${name}")" "$@"
        ;;
    run)
        # Like exec, for a test run against the engine: DOCKER_HOST is the engine's, and
        # the engine-restart test is not enabled (it restarts the dockerd behind
        # DOCKER_HOST with the host's binaries, the way .ci/run starts the host's engine).
        # The Swarm tests use the Swarm engines whatever DOCKER_HOST says: leave them out
        # (-m "not swarm"), as the tox envs do.
        [[ $# -ge 3 ]] || die "usage: $0 run NAME CMD..."
        check_name "$2"
        name="$2"
        shift 2
        if ! answers "${name}"; then
            # As the integration tests skip without an engine, unless it is required (CI).
            [[ "${DOCKYARD_REQUIRE_DOCKER:-0}" == "1" ]] \
                && die "${name} does not answer at $(host_of "${name}"); start it first"
            log "${name} does not answer at $(host_of "${name}"): its tests are skipped" \
                "(bash tests/engines.sh start ${name} starts it; DOCKYARD_REQUIRE_DOCKER=1 fails instead)"
            exit 0
        fi
        export DOCKER_HOST
        DOCKER_HOST="$(host_of "${name}")"
        unset DOCKYARD_TEST_RESTART_ENGINE DOCKER_CONTEXT
        # The engine sees the host's files only under its run dir (bound at the same path):
        # temporary directories a test binds into a worker must be made there.
        export TMPDIR
        TMPDIR="$(run_dir_of "${name}")/tmp"
        mkdir -p "${TMPDIR}"
        exec nsenter --net="/var/run/netns/$(netns_of "${name}")" "$@"
        ;;
    *)
        echo "usage: $0 build [NAME...]|start NAME|stop NAME|stop-all|host NAME|netns NAME|exec NAME CMD...|run NAME CMD..." >&2
        echo "engines: ${ENGINES[*]}" >&2
        exit 2
        ;;
esac
