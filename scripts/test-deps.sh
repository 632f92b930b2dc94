#!/usr/bin/env bash
# What the tests need beyond .venv, installed from Debian when missing, as `make setup` builds
# .venv: `chromium` drives the search page's browser test (Playwright never downloads a browser),
# `java` runs pyspark's test. Usage: scripts/test-deps.sh [chromium] [java]
# Installs as root, or through passwordless sudo; otherwise it stops at once with one line
# naming the command to run, rather than letting a test fail minutes later.
set -euo pipefail

declare -A PACKAGE=([chromium]=chromium [java]=default-jre-headless)

missing=()
for tool in "$@"; do
    [ -n "${PACKAGE[$tool]:-}" ] || { echo "error: test-deps.sh: unknown tool '$tool'" \
        "(chromium | java)" >&2; exit 2; }
    command -v "$tool" >/dev/null || missing+=("${PACKAGE[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages="${missing[*]}"
if ! command -v apt-get >/dev/null; then
    echo "error: the tests need $* and apt-get is not here: install $packages (Java 17+)" \
        "with this system's package manager, then run make again" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "error: the tests need $packages, which only root can install: run" \
        "'sudo apt-get update && sudo apt-get install -y $packages', then make again" >&2
    exit 1
fi
echo "installing $packages for the tests (apt-get)"
# env: sudo's env_reset would drop a plain DEBIAN_FRONTEND assignment.
if ! "${sudo[@]}" apt-get update -qq ||
    ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; then
    echo "error: apt-get could not install $packages (its messages are above)" >&2
    exit 1
fi
for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "error: $tool is still missing after installing" \
        "${PACKAGE[$tool]}" >&2; exit 1; }
done
