#!/usr/bin/env bash
# Runs the whole test suite as on a slow machine: the test binaries, every
# server they start (wasmhook, nats-server, chromium), and the plugin builds
# they run (npm, componentize-js, componentize-py) held together to a CPU
# quota — half a core by default — in a cgroup v1 `cpu` group.
#
# The compile step runs first at full speed (outside the group): what this
# proves is that no test's outcome depends on how fast the machine runs it,
# not how long rustc takes at half a core.
#
# Usage: tests/slow-machine.sh [CORES] [-- extra `cargo test` arguments]
#   CORES: the quota in cores (default 0.5), e.g. `tests/slow-machine.sh 0.25`.
#
# Needs root and the cgroup v1 cpu controller at /sys/fs/cgroup/cpu; where
# either is missing it says so and exits 0 without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."

cores="${1:-0.5}"
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift

controller=/sys/fs/cgroup/cpu
if [ "$(id -u)" -ne 0 ]; then
  echo "slow-machine: skipped: needs root to create a cgroup (running as $(id -un))"
  exit 0
fi
if [ ! -w "$controller/cgroup.procs" ] || [ ! -e "$controller/cpu.cfs_quota_us" ]; then
  echo "slow-machine: skipped: no writable cgroup v1 cpu controller at $controller"
  exit 0
fi

period_us=100000
quota_us=$(awk -v c="$cores" -v p="$period_us" 'BEGIN { q = int(c * p); if (q < 1000) q = 1000; print q }')
group="$controller/wasmhook-slow-$$"
mkdir "$group"
cleanup() {
  # Move anything left back to the root group so the group can be removed.
  if [ -e "$group/cgroup.procs" ]; then
    while read -r pid; do echo "$pid" >"$controller/cgroup.procs" 2>/dev/null || true; done <"$group/cgroup.procs"
    rmdir "$group" 2>/dev/null || true
  fi
}
trap cleanup EXIT
echo "$period_us" >"$group/cpu.cfs_period_us"
echo "$quota_us" >"$group/cpu.cfs_quota_us"

echo "== slow-machine: compiling the tests at full speed"
cargo test --workspace --locked --no-run "$@"

# The plugins the tests compiled in an earlier run (the shared directory of
# compiled plugins, `support::shared_compiled_plugins`) are compiled again,
# as on a fresh clone: a JavaScript or Python component is tens of seconds
# of CPU here, which is part of what this run must hold up under.
rm -rf "${CARGO_TARGET_DIR:-target}/tmp/shared-compiled-plugins"

echo "== slow-machine: cargo test --workspace held to $cores of a core ($quota_us µs per ${period_us} µs, $group)"
started=$(date +%s)
status=0
# The subshell joins the group before it execs cargo; every process it starts
# (test binaries, the servers and builds they start) inherits the group.
(
  echo "$BASHPID" >"$group/cgroup.procs"
  exec cargo test --workspace --locked "$@"
) || status=$?
elapsed=$(($(date +%s) - started))
throttled=$(awk '/^throttled_time/ { printf "%.0f", $2 / 1e9 }' "$group/cpu.stat")
echo "== slow-machine: exit $status after ${elapsed} s at $cores of a core (throttled ${throttled} s in all)"
exit "$status"
