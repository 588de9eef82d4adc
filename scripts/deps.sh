#!/bin/sh
# Install what building and testing dlock needs and this machine lacks: redis-server (with
# redis-cli and redis-benchmark), libclang-dev (for the redis-module crate's bindgen) and
# redis-py (the tests run the README's Python examples). Uses apt-get and pip when run as root;
# otherwise prints the exact command to run and exits non-zero.
#
# DLOCK_DEPS_ROOT (default: none, the real /) is prepended to every library path searched, so
# tests/deps.rs can check the detection against a made-up file tree without touching the machine.
set -e

root="${DLOCK_DEPS_ROOT:-}"

# A file bindgen's clang-sys would load as libclang: libclang.so, libclang.so.N, libclang-N.so,
# libclang-N.so.M. libclang-cpp*.so is a different library (the C++ API) that it cannot use.
is_libclang() {
    case "${1##*/}" in
        libclang-cpp*) return 1 ;;
        libclang.so | libclang.so.* | libclang-*.so | libclang-*.so.*) [ -f "$1" ] ;;
        *) return 1 ;;
    esac
}

dir_has_libclang() {
    for lib in "$1"/libclang*; do
        is_libclang "$lib" && return 0
    done
    return 1
}

# Where clang-sys looks: LIBCLANG_PATH (a directory or the library itself), then
# `llvm-config --libdir`, then the system's library directories.
have_libclang() {
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        if [ -d "$root$LIBCLANG_PATH" ]; then
            dir_has_libclang "$root$LIBCLANG_PATH" && return 0
        else
            is_libclang "$root$LIBCLANG_PATH" && return 0
        fi
    fi
    if command -v llvm-config >/dev/null 2>&1; then
        libdir=$(llvm-config --libdir 2>/dev/null) || libdir=""
        [ -n "$libdir" ] && dir_has_libclang "$root$libdir" && return 0
    fi
    for dir in "$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib \
        "$root"/usr/lib64 "$root"/usr/local/lib "$root"/lib/*-linux-gnu; do
        [ -d "$dir" ] && dir_has_libclang "$dir" && return 0
    done
    return 1
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "dlock needs a Rust toolchain (cargo): see https://rustup.rs" >&2
    exit 1
fi

packages=""
command -v "${REDIS_SERVER:-redis-server}" >/dev/null 2>&1 || packages="$packages redis-server"
command -v redis-cli >/dev/null 2>&1 || packages="$packages redis-tools"
have_libclang || packages="$packages libclang-dev"
python_redis() {
    python3 -c 'import redis' >/dev/null 2>&1
}
need_redis_py=""
python_redis || need_redis_py=yes
command -v python3 >/dev/null 2>&1 || packages="$packages python3 python3-pip"

[ -z "$packages" ] && [ -z "$need_redis_py" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    [ -n "$packages" ] && echo "dlock needs:$packages" >&2 \
        && echo "Install them with: sudo apt-get install -y$packages" >&2
    [ -n "$need_redis_py" ] && echo "dlock's tests need redis-py:" \
        "python3 -m pip install --user redis" >&2
    exit 1
fi

if [ -n "$packages" ]; then
    echo "Installing:$packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
    # Debian starts a system redis-server on port 6379 after installing it; `make run`
    # needs that port, so stop the service we just brought in.
    case "$packages" in
        *redis-server*)
            if command -v systemctl >/dev/null 2>&1; then
                systemctl disable --now redis-server >/dev/null 2>&1 || true
            fi
            ;;
    esac
fi
if [ -n "$need_redis_py" ] && ! python_redis; then
    echo "Installing redis-py"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore redis \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages redis
fi
