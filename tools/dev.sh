#!/usr/bin/env bash
# Sets up this machine (Debian, as root) and runs rollout_py's demo or its whole test suite.
#   bash tools/dev.sh demo   # set up, bring the lab up, show it serving through HAProxy
#   bash tools/dev.sh test   # set up; fast checks (ruff, mypy --strict, ansible-lint, unit
#                            # tests), then the lab tests (integration, chaos, molecule)
#   bash tools/dev.sh test ARGS...   # set up, then pytest ARGS (e.g. one test file)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
APT_PACKAGES=(haproxy prometheus postgresql openssh-server openssh-client iproute2 socat
              util-linux procps python3 python3-venv python3-pip
              # the report's tests open it in a headless browser
              chromium-headless-shell fonts-dejavu-core)

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "tools/dev.sh: run as root (the lab creates network namespaces)" >&2
        exit 2
    fi
}

install_debian_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing Debian packages: ${missing[*]}"
    # The lab runs its own sshd, HAProxy, Prometheus and PostgreSQL instances: keep the
    # packages' system services from starting while they install (policy-rc.d), unless the
    # machine already has a policy.
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && added=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ $added = 1 ] && rm -f $policy
    return 0
}

python_bin() {
    # Any Python 3.11 on PATH (ansible-core 2.19 is the line for 3.11), else Debian's.
    for py in python3.11 python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null &&
           "$py" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))'; then
            command -v "$py"; return 0
        fi
    done
    echo "tools/dev.sh: Python 3.11-3.13 is required" >&2; exit 2
}

install_python_packages() {
    local stamp=$VENV/.rollout-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    echo "== installing Python packages into $VENV"
    [ -x "$VENV/bin/python" ] || "$(python_bin)" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
}

setup() {
    need_root
    install_debian_packages
    install_python_packages
    # The flag-enabled sample app's venv (rollout_py.lab.appenv): built once per machine and
    # cached, so the first `lab up` of a test run does not pay for it.
    "$VENV/bin/python" -m rollout_py.lab.appenv >/dev/null
    export PATH="$VENV/bin:$PATH"
}

case "${1:-}" in
    demo)
        setup
        shift
        exec "$VENV/bin/python" -m rollout_py.demo "$@"
        ;;
    test)
        setup
        shift
        # pytest exits 5 when no test ran: that fails here like any other failure.
        if [ $# -gt 0 ]; then
            exec "$VENV/bin/python" -m pytest "$@"
        fi
        # Fast checks first: a type error or a lint violation fails in about a minute.
        echo "== ruff"
        "$VENV/bin/ruff" check rollout_py tests benchmarks tools inventory
        echo "== mypy --strict (package and tests)"
        "$VENV/bin/mypy"
        echo "== ansible-lint (production profile)"
        "$VENV/bin/ansible-lint" --offline --profile production playbooks roles
        echo "== unit tests"
        "$VENV/bin/python" -m pytest tests/unit -q
        echo "== lab tests (integration, faults, molecule)"
        # Two workers, a test file each at a time (a module shares its lab); the labs are
        # independent (own namespaces, bridge, addresses, ports) and most of a lab test is
        # waiting on the fleet. A short base for the tests' dirs: a lab's unix sockets live
        # under its dir (at most 107 bytes a path). The slowest tests printed: the suite has a
        # 35-minute budget.
        exec "$VENV/bin/python" -m pytest tests/integration tests/chaos -n 2 --dist loadfile \
            --basetemp=/tmp/rollout-tests --durations=25
        ;;
    *)
        echo "usage: bash tools/dev.sh demo|test [args]" >&2
        exit 2
        ;;
esac
