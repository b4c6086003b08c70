#!/usr/bin/env bash
# The dockyard demo, one command from a fresh clone:
#
#     bash examples/demo.sh
#
# 1. installs the package with its command-line extra (pip install '.[cli]');
# 2. makes sure a Docker engine answers: as root on Debian it installs docker.io and starts
#    dockerd when none does;
# 3. builds the demo image dockyard-demo:latest FROM scratch around a static busybox
#    (installing busybox-static as root on Debian; pulling busybox where a registry exists);
# 4. runs two batches with `dockyard run`:
#      examples/demo-jobs.jsonl   a success, a crash, an OOM kill, a timeout kill, and a job
#                                 whose finished container is kept as a snapshot image
#      examples/demo-reuse.jsonl  a job of the same work item that starts warm from it
#    and lists the snapshot images.
#
# Environment: PYTHON (default python3), DEMO_INSTANCE (router instance id, default
# dockyard-demo), DOCKER_HOST (engine to use).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
DEMO_IMAGE=dockyard-demo:latest
DEMO_INSTANCE=${DEMO_INSTANCE:-dockyard-demo}
# Its own snapshot prefix, so the demo never evicts the snapshots of a real router.
SNAPSHOT_PREFIX=dockyard-demo-snapshot-
DOCKERD_LOG=/var/log/dockyard-demo-dockerd.log
DOCKERD_WAIT_S=60

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore DEBIAN_FRONTEND=noninteractive

step() {
    if [[ -t 1 ]]; then printf '\n\033[1m==> %s\033[0m\n' "$*"; else printf '\n==> %s\n' "$*"; fi
}
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}
is_root() { [[ "$(id -u)" -eq 0 ]]; }
can_apt() { is_root && command -v apt-get >/dev/null 2>&1; }
engine_answers() {
    "${PYTHON}" -c 'import docker; docker.from_env(timeout=10).ping()' >/dev/null 2>&1
}
dockyard() { "${PYTHON}" -m dockyard._cli "$@"; }

command -v "${PYTHON}" >/dev/null 2>&1 || die "${PYTHON} not found; dockyard needs Python 3.11+"
"${PYTHON}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "dockyard needs Python 3.11+, found $("${PYTHON}" --version 2>&1)"

# ---------------------------------------------------------------------------------------
step "system packages"
missing=()
"${PYTHON}" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ! command -v dockerd >/dev/null 2>&1 && [[ -z "${DOCKER_HOST:-}" && ! -S /var/run/docker.sock ]]; then
    missing+=(docker.io)
fi
"${PYTHON}" examples/demo_image.py --check-busybox >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
    if can_apt; then
        echo "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "not installing ${missing[*]}: that needs root on Debian or Ubuntu"
    fi
else
    echo "nothing to install"
fi
"${PYTHON}" -m pip --version >/dev/null 2>&1 || die "pip is missing (Debian: apt-get install python3-pip)"

# ---------------------------------------------------------------------------------------
step "dockyard: pip install '.[cli]'"
if "${PYTHON}" -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'; then
    # Debian's own Python refuses pip installs outside a virtualenv (PEP 668). Allow them for
    # this user, as the test command in the README needs the same.
    echo "this Python is externally managed (PEP 668): allowing pip installs for $(id -un)"
    echo "  (pip config --user set global.break-system-packages true)"
    "${PYTHON}" -m pip config --user set global.break-system-packages true >/dev/null
fi
"${PYTHON}" -m pip install -q '.[cli]'
"${PYTHON}" -c 'import dockyard, rich; print("dockyard", dockyard.__version__, "installed")'

# ---------------------------------------------------------------------------------------
step "Docker engine"
if engine_answers; then
    echo "a Docker engine answers"
elif is_root && command -v dockerd >/dev/null 2>&1; then
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        echo "starting docker with systemctl"
        systemctl start docker || true
    fi
    if ! engine_answers; then
        echo "starting dockerd (log: ${DOCKERD_LOG})"
        setsid dockerd </dev/null >"${DOCKERD_LOG}" 2>&1 &
    fi
    for ((i = 0; i < DOCKERD_WAIT_S; i++)); do
        engine_answers && break
        sleep 1
    done
    engine_answers || die "the Docker engine did not answer within ${DOCKERD_WAIT_S}s; see ${DOCKERD_LOG}"
    echo "the Docker engine answers"
else
    die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}). Start one, or run this" \
        "script as root on Debian to have it install and start docker.io."
fi

# ---------------------------------------------------------------------------------------
step "demo image"
"${PYTHON}" examples/demo_image.py --tag "${DEMO_IMAGE}"

# ---------------------------------------------------------------------------------------
# The demo jobs need no network: --network none keeps the demo independent of the
# engine's bridge and firewall setup.
common=(--image "${DEMO_IMAGE}" --instance "${DEMO_INSTANCE}" --network none --max-workers 3 --timeout 5
    --memory-mb 32 --stop-grace 1 --snapshots --snapshot-prefix "${SNAPSHOT_PREFIX}")

step "batch 1: dockyard run examples/demo-jobs.jsonl ${common[*]}"
echo "expect: hello and build-cache succeed, crash fails (exit 3), memory-hog is OOM-killed"
echo "(exit 137), sleeper is killed at its 5 s deadline; the command exits 1"
set +e
dockyard run examples/demo-jobs.jsonl "${common[@]}"
first=$?
set -e

step "batch 2: dockyard run examples/demo-reuse.jsonl ${common[*]}"
echo "expect: reuse-cache starts warm from build-cache's snapshot and finds its file"
set +e
dockyard run examples/demo-reuse.jsonl "${common[@]}"
second=$?
set -e

step "snapshot images: dockyard snapshots --snapshot-prefix ${SNAPSHOT_PREFIX}"
dockyard snapshots --instance "${DEMO_INSTANCE}" --snapshot-prefix "${SNAPSHOT_PREFIX}"

step "result"
if [[ ${first} -eq 1 && ${second} -eq 0 ]]; then
    echo "demo ran as expected: batch 1 exited 1 (its crash, OOM kill and timeout are on" \
        "purpose), batch 2 exited 0 after a warm start."
    echo "Remove the demo snapshot with:" \
        "SNAPSHOT_MAX_COUNT=0 dockyard snapshots --evict --snapshot-prefix ${SNAPSHOT_PREFIX}"
else
    die "unexpected exit statuses: batch 1 exited ${first} (expected 1)," \
        "batch 2 exited ${second} (expected 0)"
fi
