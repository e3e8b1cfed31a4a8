#!/usr/bin/env bash
# Run a command with DDS confined to this machine: loopback-only discovery variables, one
# ROS_DOMAIN_ID for the run, and - when root and unshare allow it - a private network
# namespace with only `lo` up, so not a single packet can leave the machine.
set -euo pipefail
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1 RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null && unshare -n true 2>/dev/null; then
  export HP_ROS_NETNS=1
  exec unshare -n -- sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
echo "[run_isolated] no private network namespace here (needs root + unshare); using loopback-only DDS variables" >&2
export HP_ROS_NETNS=0
exec "$@"
