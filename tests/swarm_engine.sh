#!/usr/bin/env bash
# A second Docker engine, a single-node swarm manager, in its own network namespace.
#
#   tests/swarm_engine.sh start   # reuse it when it answers, else start it; prints DOCKER_HOST
#   tests/swarm_engine.sh stop    # stop it, only when this script started it
#
# Run as root. The engine lives in the `dyswarm` netns (never in the host's: a second
# dockerd there deletes the first one's docker0). `ip netns exec` remounts /sys and hides
# the cgroups from dockerd, so nsenter enters the namespace instead. The main engine, its
# swarm state and its containers are never touched.
set -euo pipefail

NETNS=dyswarm
RUN_DIR=/run/dyswarm
DATA_ROOT=/var/lib/dyswarm
SOCKET="${RUN_DIR}/docker.sock"
PIDFILE="${RUN_DIR}/docker.pid"
STARTED_MARK="${RUN_DIR}/started-by-swarm-engine-sh"
LOG=/tmp/dyswarm.log
HOST="unix://${SOCKET}"
WAIT_S=60

answers() {
    DOCKER_HOST="${HOST}" timeout 10 docker info >/dev/null 2>&1
}

swarm_active() {
    [[ "$(DOCKER_HOST="${HOST}" docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" == "active" ]]
}

start() {
    if answers; then
        echo "swarm engine already answers at ${HOST}; reusing it" >&2
    else
        ip netns list | grep -qw "${NETNS}" || ip netns add "${NETNS}"
        nsenter --net="/var/run/netns/${NETNS}" ip link set lo up
        mkdir -p "${RUN_DIR}" "${DATA_ROOT}"
        nsenter --net="/var/run/netns/${NETNS}" setsid dockerd \
            --data-root "${DATA_ROOT}" --exec-root "${RUN_DIR}/exec" \
            --pidfile "${PIDFILE}" -H "${HOST}" </dev/null >"${LOG}" 2>&1 &
        for ((i = 0; i < WAIT_S; i++)); do
            answers && break
            sleep 1
        done
        if ! answers; then
            echo "the swarm engine did not answer within ${WAIT_S}s; log:" >&2
            tail -50 "${LOG}" >&2 || true
            exit 1
        fi
        touch "${STARTED_MARK}"
        echo "swarm engine started (pid $(cat "${PIDFILE}"), log ${LOG})" >&2
    fi
    if ! swarm_active; then
        DOCKER_HOST="${HOST}" docker swarm init --advertise-addr 127.0.0.1 >/dev/null
        echo "swarm initialised on ${HOST}" >&2
    fi
    DOCKER_HOST="${HOST}" python3 "$(dirname "${BASH_SOURCE[0]}")/images.py" >/dev/null
    echo "${HOST}"
}

stop() {
    if [[ ! -e "${STARTED_MARK}" ]]; then
        echo "the swarm engine was not started by this script; leaving it" >&2
        return 0
    fi
    if [[ -s "${PIDFILE}" ]] && kill -0 "$(cat "${PIDFILE}")" 2>/dev/null; then
        pid="$(cat "${PIDFILE}")"
        kill -TERM "${pid}"
        for _ in $(seq 1 30); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 1
        done
        echo "swarm engine stopped (pid ${pid})" >&2
    fi
    rm -f "${STARTED_MARK}"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
