#!/usr/bin/env bash
# A second Docker engine, a single-node swarm manager, in its own network namespace.
#
#   tests/swarm_engine.sh start         # reuse it when it answers, else start it; prints DOCKER_HOST
#   tests/swarm_engine.sh stop          # stop what this script started (both nodes)
#   tests/swarm_engine.sh start-worker  # a second node: a third engine in the `dyswarm2`
#                                       # netns, a veth pair to the manager's, joined as a
#                                       # worker; prints its DOCKER_HOST
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

NETNS2=dyswarm2
RUN_DIR2=/run/dyswarm2
DATA_ROOT2=/var/lib/dyswarm2
HOST2="unix://${RUN_DIR2}/docker.sock"
PIDFILE2="${RUN_DIR2}/docker.pid"
STARTED_MARK2="${RUN_DIR2}/started-by-swarm-engine-sh"
MANAGER_IP=10.77.0.1
WORKER_IP=10.77.0.2

answers() {
    DOCKER_HOST="${1:-${HOST}}" timeout 10 docker info >/dev/null 2>&1
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

start_worker() {
    answers || start >/dev/null
    if ! answers "${HOST2}"; then
        ip netns list | grep -qw "${NETNS2}" || ip netns add "${NETNS2}"
        nsenter --net="/var/run/netns/${NETNS2}" ip link set lo up
        if ! nsenter --net="/var/run/netns/${NETNS}" ip link show vsw1 >/dev/null 2>&1; then
            ip link add vsw1 netns "${NETNS}" type veth peer name vsw2 netns "${NETNS2}"
            nsenter --net="/var/run/netns/${NETNS}" ip addr add "${MANAGER_IP}/24" dev vsw1
            nsenter --net="/var/run/netns/${NETNS2}" ip addr add "${WORKER_IP}/24" dev vsw2
        fi
        nsenter --net="/var/run/netns/${NETNS}" ip link set vsw1 up
        nsenter --net="/var/run/netns/${NETNS2}" ip link set vsw2 up
        mkdir -p "${RUN_DIR2}" "${DATA_ROOT2}"
        nsenter --net="/var/run/netns/${NETNS2}" setsid dockerd \
            --data-root "${DATA_ROOT2}" --exec-root "${RUN_DIR2}/exec" \
            --pidfile "${PIDFILE2}" -H "${HOST2}" </dev/null >/tmp/dyswarm2.log 2>&1 &
        for ((i = 0; i < WAIT_S; i++)); do
            answers "${HOST2}" && break
            sleep 1
        done
        answers "${HOST2}" || { echo "the second node did not answer" >&2; exit 1; }
        touch "${STARTED_MARK2}"
    fi
    if [[ "$(DOCKER_HOST="${HOST2}" docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]]; then
        # A node killed without leaving (its engine ended with the machine's processes)
        # still holds its old membership: leave it before joining again.
        DOCKER_HOST="${HOST2}" timeout 30 docker swarm leave --force >/dev/null 2>&1 || true
        token="$(DOCKER_HOST="${HOST}" docker swarm join-token -q worker)"
        DOCKER_HOST="${HOST2}" timeout 60 docker swarm join --advertise-addr "${WORKER_IP}" \
            --listen-addr "${WORKER_IP}:2377" --token "${token}" "${MANAGER_IP}:2377" >/dev/null
        echo "second node joined the swarm" >&2
    fi
    DOCKER_HOST="${HOST2}" python3 "$(dirname "${BASH_SOURCE[0]}")/images.py" >/dev/null
    echo "${HOST2}"
}

stop_worker() {
    [[ -e "${STARTED_MARK2}" ]] || return 0
    if [[ -s "${PIDFILE2}" ]] && kill -0 "$(cat "${PIDFILE2}")" 2>/dev/null; then
        DOCKER_HOST="${HOST2}" timeout 30 docker swarm leave --force >/dev/null 2>&1 || true
        node="$(DOCKER_HOST="${HOST}" docker node ls --filter role=worker -q 2>/dev/null || true)"
        pid="$(cat "${PIDFILE2}")"
        kill -TERM "${pid}"
        for _ in $(seq 1 30); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 1
        done
        for id in ${node}; do
            DOCKER_HOST="${HOST}" docker node rm --force "${id}" >/dev/null 2>&1 || true
        done
        echo "second node stopped (pid ${pid})" >&2
    fi
    rm -f "${STARTED_MARK2}"
}

stop() {
    stop_worker
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
    start-worker) start_worker ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|start-worker|stop" >&2
        exit 2
        ;;
esac
