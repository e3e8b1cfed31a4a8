"""Start ROS 2 processes that keep DDS on loopback (tests, benchmarks, the demo).

Every process that calls ``rclpy.init()`` from hp_ros tooling gets
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (Jazzy/Kilted), ``ROS_LOCALHOST_ONLY=1`` (Humble)
and a per-run ``ROS_DOMAIN_ID``; where the platform allows it (root + ``unshare``), the whole
run also lives in a private network namespace with only ``lo`` up, so no packet can leave the
machine whatever DDS decides to do. This module is ROS-free (it never imports rclpy).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

LOOPBACK_VARS = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "ROS_LOCALHOST_ONLY": "1",
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
}


def pick_domain_id() -> int:
    """A domain id for this run (1..100), so concurrent runs on one machine do not mix."""
    return random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)


def loopback_env(domain_id: int | None = None, base: Mapping[str, str] | None = None) -> dict:
    """Environment for a ROS 2 process: ``base`` (default os.environ) + loopback-only DDS.

    An existing ``ROS_DOMAIN_ID`` in ``base`` is kept unless ``domain_id`` is given, so a
    parent (the test session, the demo) can hand one id to all its children.
    """
    env = dict(os.environ if base is None else base)
    env.update(LOOPBACK_VARS)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif "ROS_DOMAIN_ID" not in env:
        env["ROS_DOMAIN_ID"] = str(pick_domain_id())
    env.pop("ROS_STATIC_PEERS", None)  # a user's static peers would be contacted even under LOCALHOST
    env.setdefault("PYTHONUNBUFFERED", "1")
    for k, v in dds_profile_env(env.get("HP_ROS_DDS_TRANSPORT", "loopback"), base=env).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def dds_profile_env(transport: str = "loopback", base: Mapping[str, str] | None = None) -> dict:
    """Environment selecting the graph's Fast DDS transports (``hp_ros.graph.DDS_PROFILES``).

    ``shm_udp`` (the launch file's default): ``config/fastdds_shm_udp.xml``, shared memory between
    processes of one host + UDPv4 on every interface, discovery left to the user's
    ``ROS_DOMAIN_ID`` / ``ROS_AUTOMATIC_DISCOVERY_RANGE`` / ``ROS_STATIC_PEERS``; ``loopback`` (the
    demo, the tests, the benchmarks): ``config/fastdds_loopback_shm.xml``, shared memory + UDPv4 on
    127.0.0.1 only. Either is skipped when ``base`` already names a profile file (a lab's own
    wins). ``udp``: the rmw default transports, any profile file removed (``None`` values: remove
    the variable). Never sets a ``ROS_*`` variable. Measured in benchmarks/bench_graph.py.
    """
    from hp_ros.graph import DDS_PROFILES, config_file

    base = os.environ if base is None else base
    if transport not in DDS_PROFILES:
        hint = " ('shm' is now 'loopback': the same profile)" if transport == "shm" else ""
        raise ValueError(f"dds_transport must be one of {list(DDS_PROFILES)}, got {transport!r}{hint}")
    if DDS_PROFILES[transport] is None:
        return {"FASTDDS_DEFAULT_PROFILES_FILE": None, "FASTRTPS_DEFAULT_PROFILES_FILE": None,
                "HP_ROS_DDS_TRANSPORT": transport}
    if base.get("FASTDDS_DEFAULT_PROFILES_FILE") or base.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        return {"HP_ROS_DDS_TRANSPORT": transport}
    return {"FASTDDS_DEFAULT_PROFILES_FILE": config_file(DDS_PROFILES[transport]), "HP_ROS_DDS_TRANSPORT": transport}


def in_private_netns() -> bool:
    """True when this process sees no network interface but ``lo`` (private namespace)."""
    # /proc/self/net/dev is per network namespace (/sys/class/net shows sysfs's mounter's).
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [ln.split(":")[0].strip() for ln in lines] == ["lo"]


def can_unshare_net() -> bool:
    """True when a private network namespace can be created here (root and ``unshare``)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def isolated(cmd: Sequence[str]) -> list:
    """Wrap ``cmd`` so it runs in a fresh network namespace with ``lo`` up, when possible.

    Already isolated, or not allowed to isolate: ``cmd`` unchanged (the loopback variables
    from :func:`loopback_env` still keep DDS discovery local).
    """
    if in_private_netns() or not can_unshare_net():
        return list(cmd)
    return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


class NodeProcess:
    """A ROS 2 process (node or tool) with loopback DDS, its output captured to a log file.

    >>> p = NodeProcess(["pose_smoke_node"], log_dir=Path("/tmp"), env=loopback_env())
    >>> p.stop()
    """

    def __init__(self, cmd: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None,
                 name: str | None = None):
        self.cmd = list(cmd)
        self.name = name or Path(self.cmd[0]).name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=dict(env or loopback_env()), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the process printed so far (also after :meth:`stop`)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGINT (rclpy shuts down cleanly), then SIGTERM, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        return self.proc.returncode


def python_module_cmd(module: str, *args: str) -> list:
    """``[python, -m, module, *args]`` with the running interpreter (works without PATH set-up)."""
    return [sys.executable, "-m", module, *args]
