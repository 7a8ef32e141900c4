#!/usr/bin/env bash
# Install the servers the integration tests start (tests/harness): Mosquitto, VictoriaMetrics,
# InfluxDB 1.x, PostgreSQL 15 and Prometheus, from Debian's packages.
#
# Idempotent: only missing ones are installed, and `apt-get update` runs at most once. The packages'
# own daemons are NOT started (no systemd here, and a policy-rc.d guard stops postinst from starting
# them through invoke-rc.d): the tests start private instances on free ports, and system daemons on
# 1883/8086/8088/8428/5432/9090 would only get in the way.
#
# Not root: prints the command to run and exits 0; the tests then skip (or fail under CI=true).
set -euo pipefail

PG_MAJOR=15

# package -> a file that proves it is installed (Debian paths; PostgreSQL's binaries are off PATH).
declare -A PROBE=(
    [mosquitto]=/usr/sbin/mosquitto
    [victoria-metrics]=/usr/bin/victoria-metrics
    [influxdb]=/usr/bin/influxd
    ["postgresql-${PG_MAJOR}"]="/usr/lib/postgresql/${PG_MAJOR}/bin/postgres"
    [systemd]=/usr/bin/systemd-analyze
    [prometheus]=/usr/bin/prometheus
)

missing=()
for package in mosquitto victoria-metrics influxdb "postgresql-${PG_MAJOR}" systemd prometheus; do
    if [[ -x "${PROBE[$package]}" ]]; then
        echo "ok: ${package} (${PROBE[$package]})"
    else
        missing+=("${package}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "all test services are installed"
    exit 0
fi

if [[ ${EUID} -ne 0 ]]; then
    echo "missing test services: ${missing[*]}"
    echo "install them as root with:"
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    echo "(until then the integration tests skip, or fail when CI=true)"
    exit 0
fi

# Keep maintainer scripts from starting the daemons. Only install the guard if there is none, and
# remove only our own.
guard=/usr/sbin/policy-rc.d
own_guard=0
if [[ ! -e ${guard} ]]; then
    printf '#!/bin/sh\n# installed by coldtrace scripts/install-test-services.sh\nexit 101\n' >"${guard}"
    chmod 0755 "${guard}"
    own_guard=1
fi
cleanup() {
    if [[ ${own_guard} -eq 1 ]]; then
        rm -f "${guard}"
    fi
}
trap cleanup EXIT

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

for package in "${missing[@]}"; do
    if [[ ! -x "${PROBE[$package]}" ]]; then
        echo "error: ${package} installed but ${PROBE[$package]} is missing" >&2
        exit 1
    fi
done
echo "all test services are installed"
