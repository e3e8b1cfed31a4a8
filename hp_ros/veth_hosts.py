"""Two simulated hosts on one machine: two network namespaces joined by a veth pair.

Used by the two-host end-to-end test and ``benchmarks/bench_two_hosts.py`` to run parts of the
graph "on different machines" without a packet leaving this one:

* each host is a fresh network namespace, and a mount namespace with a ``/dev/shm`` of its own
  (no shared memory between the hosts, as between two machines), held open by a ``sleep``
  process (``unshare -n -m``); they disappear, veth pair included, when the holder and everything
  started in them have exited;
* its interfaces are ``lo`` and one end of the veth pair, nothing else; the two ends carry the
  two addresses of a private /30 (:data:`SUBNET`) that exists only between the two namespaces;
* no route but the /30's own (no default route): there is nowhere else to send a packet;
* a command runs on a host through ``nsenter -t <holder> -n -m`` (:meth:`TwoHosts.command`);
* :meth:`TwoHosts.__enter__` returns once both veth ends have a carrier.

Needs root, ``unshare``, ``nsenter``, ``mount`` and ``ip`` (:func:`unavailable_reason` says what is
missing). ROS-free: it only starts processes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

# the /30 between the two hosts: network, host A, host B, broadcast (RFC 1918, private)
SUBNET = "10.213.7.0/30"
ADDRESSES = {"A": "10.213.7.1", "B": "10.213.7.2"}
PREFIX_LEN = 30
VETH = {"A": "hpveth_a", "B": "hpveth_b"}


def unavailable_reason() -> str | None:
    """Why two namespaces cannot be made here (None: they can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "creating network namespaces and a veth pair needs root"
    missing = [t for t in ("ip", "unshare", "nsenter", "mount") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (iproute2 / util-linux)"
    r = subprocess.run(["unshare", "-n", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"unshare -n -m failed here: {r.stderr.strip() or r.returncode}"
    return None


@dataclass
class TwoHosts:
    """Hosts ``A`` and ``B``: namespaces, veth ends and addresses (context manager).

    >>> with TwoHosts() as hosts:
    ...     subprocess.run(hosts.command("A", ["ip", "-4", "addr"]))
    """

    pids: dict = field(default_factory=dict)      # host -> pid of the process holding its namespaces
    holders: dict = field(default_factory=dict)   # host -> Popen of that process (when made here)

    def __enter__(self) -> "TwoHosts":
        try:
            for h in ("A", "B"):
                # a network namespace and a mount namespace with a /dev/shm of its own: shared
                # memory between the hosts is no more possible than between two machines
                p = subprocess.Popen(["unshare", "-n", "-m", "--propagation", "private", "--", "sh", "-c",
                                      "mount -t tmpfs -o size=256m,mode=1777 hp_ros_shm /dev/shm && echo ready; "
                                      "exec sleep infinity"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.holders[h], self.pids[h] = p, p.pid
                if p.stdout.readline().strip() != "ready":  # the namespace exists once the shell runs
                    raise RuntimeError(f"could not create the network namespace of host {h}")
            self._ip("A", "link", "add", VETH["A"], "type", "veth", "peer", "name", VETH["B"],
                     "netns", str(self.pids["B"]))
            for h in ("A", "B"):
                self._ip(h, "link", "set", "lo", "up")
                self._ip(h, "addr", "add", f"{ADDRESSES[h]}/{PREFIX_LEN}", "dev", VETH[h])
                self._ip(h, "link", "set", VETH[h], "up")
            self._wait_carrier()
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the holders (the namespaces and the veth pair go with the last process in them)."""
        for p in self.holders.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()
        self.holders.clear()
        self.pids.clear()

    def _wait_carrier(self, timeout: float = 20.0) -> None:
        """Until both veth ends are operationally up (the carrier comes a moment after ``link set
        up``): Fast DDS lists its interfaces once, when a participant is created, and a participant
        made before that would never use the veth end."""
        import time

        deadline = time.monotonic() + timeout
        while not all("state UP" in self._ip(h, "-o", "link", "show", "dev", VETH[h]) for h in ("A", "B")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the veth pair has no carrier after {timeout:.0f} s")
            time.sleep(0.05)

    def _ip(self, host: str, *args: str) -> str:
        r = subprocess.run(self.command(host, ["ip", *args]), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"host {host}: ip {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def command(self, host: str, cmd: list) -> list:
        """``cmd`` run in ``host``'s network namespace (same file system, same user)."""
        return ["nsenter", "-t", str(self.pids[host]), "-n", "-m", "--", *cmd]

    def address(self, host: str) -> str:
        return ADDRESSES[host]

    def peer(self, host: str) -> str:
        """The other host's address (its ``ROS_STATIC_PEERS``)."""
        return ADDRESSES["B" if host == "A" else "A"]

    def interfaces(self, host: str) -> list:
        """Names of the interfaces in ``host``'s namespace that are up."""
        out = self._ip(host, "-o", "link", "show", "up")
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln]

    def routes(self, host: str) -> list:
        """``host``'s IPv4 routes (``ip route`` lines)."""
        return [ln.strip() for ln in self._ip(host, "-4", "route", "show", "table", "all").splitlines()
                if ln.strip() and not ln.startswith(("local ", "broadcast ", "multicast "))]

    def veth_bytes(self, host: str) -> tuple:
        """(received, sent) bytes of ``host``'s veth end so far (``/proc/net/dev`` of its namespace:
        ``/sys/class/net`` shows the namespace that mounted sysfs)."""
        out = subprocess.run(self.command(host, ["cat", "/proc/net/dev"]), capture_output=True, text=True).stdout
        for ln in out.splitlines():
            name, _, rest = ln.partition(":")
            if name.strip() == VETH[host]:
                f = rest.split()
                return int(f[0]), int(f[8])
        raise RuntimeError(f"host {host}: no {VETH[host]} in /proc/net/dev")

    def ros_env(self, host: str, base: dict, transport: str = "shm_udp") -> dict:
        """``base`` (a loopback_env) made into a host's ROS 2 environment: discovery by unicast to
        the other host only (``ROS_STATIC_PEERS``) plus this host's own processes
        (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: no multicast), without ``ROS_LOCALHOST_ONLY``
        (rcl ignores the static peers under it) and with the Fast DDS profile of ``transport``
        (default: the launch file's lab default)."""
        from hp_ros.ros_process import dds_profile_env

        env = dict(base)
        env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": self.peer(host)})
        for k in ("ROS_LOCALHOST_ONLY", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
            env.pop(k, None)
        for k, v in dds_profile_env(transport, base=env).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env


# --- the graph split over the two hosts ----------------------------------------------------------

# process -> host: A stands for the robot's computer (drivers, here the replay) with the GPU
# workstation's refinement; B for the perception PC (segmentation next to the camera, tracking).
# ``listener``: the process that runs :func:`hp_ros.tools.demo.run_pipeline` (its Collector).
SPLIT = {"replay": "A", "refinement_node": "A", "segmentation_node": "B", "tracking_node": "B", "listener": "B"}


def placement(hosts: TwoHosts, here: str, split: dict = SPLIT, transport: str = "shm_udp"):
    """``run_pipeline``'s ``place`` hook: each process on its host of ``split``, with that host's
    ROS environment; the caller runs on host ``here`` (its processes need no ``nsenter``)."""
    def place(name, argv, env):
        host = split[name]
        return (argv if host == here else hosts.command(host, argv)), hosts.ros_env(host, env, transport)
    return place


def run_split(pids: dict, out_dir, duration: float, seed: int, object_spec: str, rate: float = 1.0,
              transport: str = "shm_udp") -> dict:
    """In host B (``python -m hp_ros.veth_hosts`` started through ``nsenter``): the demo pipeline
    with its processes placed by :data:`SPLIT`; the result dict (``run_pipeline``'s)."""
    from pathlib import Path

    from hp_ros.tools.demo import run_pipeline

    hosts = TwoHosts(pids=dict(pids))
    return run_pipeline(Path(out_dir), object_spec=object_spec, duration=duration, seed=seed, rate=rate,
                        log=lambda *a: None, place=placement(hosts, "B", transport=transport), initial_offset=(0.01, 5.0))


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description="run the demo graph split over two hosts (inside host B)")
    ap.add_argument("--pids", nargs=2, type=int, required=True, metavar=("A", "B"),
                    help="pids holding host A's and host B's namespaces (TwoHosts.pids)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--object", default="builtin:cracker_box")
    ap.add_argument("--rate", type=float, default=1.0, help="replay rate factor")
    ap.add_argument("--transport", default="shm_udp")
    args = ap.parse_args(argv)
    try:
        r = run_split({"A": args.pids[0], "B": args.pids[1]}, args.out, args.duration, args.seed, args.object,
                      rate=args.rate, transport=args.transport)
    except RuntimeError as e:
        print(f"run_split: {e}", file=sys.stderr)
        return 1
    keep = {k: v for k, v in r.items() if k not in ("per_frame", "latencies_ms")}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(keep, f, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
