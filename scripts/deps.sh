#!/bin/sh
# Install what building and testing dlock needs and this machine lacks:
# redis-server (with redis-cli and redis-benchmark) and libclang-dev (for the redis-module
# crate's bindgen). Uses apt-get when run as root; otherwise says what to install.
set -e

missing=""
command -v "${REDIS_SERVER:-redis-server}" >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    for lib in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang.so* /usr/lib/*/libclang-*.so*; do
        [ -e "$lib" ] && return 0
    done
    return 1
}
have_libclang || missing="$missing libclang-dev"
if ! command -v cargo >/dev/null 2>&1; then
    echo "dlock needs a Rust toolchain (cargo): see https://rustup.rs" >&2
    exit 1
fi
# The test suite runs the README's redis-py example.
python_redis() {
    command -v python3 >/dev/null 2>&1 && python3 -c 'import redis' >/dev/null 2>&1
}
if ! python_redis; then
    if [ "$(id -u)" = 0 ] && command -v python3 >/dev/null 2>&1 \
        && python3 -m pip --version >/dev/null 2>&1; then
        echo "Installing redis-py"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore redis \
            || python3 -m pip install --quiet --disable-pip-version-check redis
    else
        missing="$missing python3-redis"
    fi
fi

[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    # Debian starts a system redis-server on port 6379 after installing it; `make run`
    # needs that port, so stop the service we just brought in.
    case "$missing" in
        *redis-server*)
            if command -v systemctl >/dev/null 2>&1; then
                systemctl disable --now redis-server >/dev/null 2>&1 || true
            fi
            ;;
    esac
else
    echo "dlock needs:$missing" >&2
    echo "Install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
