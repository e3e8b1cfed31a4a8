"""DDS transport choices: the launch file's default reaches other hosts (a lab's graph spans the
hand driver's computer, the camera PC and a GPU workstation); the demo, the tests and the
benchmarks keep DDS on loopback explicitly.

The launch file itself is run here with small stand-ins for ``launch`` / ``launch_ros`` (not
installable from PyPI): what it hands each node as its environment is what this test reads."""
from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NS = "{http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles}"
# elements of a Fast DDS profile that would narrow or override what the user's ROS_* variables set
DISCOVERY_OVERRIDES = ("interfaceWhiteList", "interfaces", "initialPeersList", "metatrafficUnicastLocatorList",
                       "metatrafficMulticastLocatorList", "defaultUnicastLocatorList", "defaultMulticastLocatorList",
                       "domainId", "discovery_config", "netmask_filter")


def _run_launch_file(monkeypatch, launch_args: dict | None = None, env: dict | None = None) -> list:
    """Run launch/allegro_tracking.launch.py's node factory with stand-in launch modules; the
    keyword arguments of every ``launch_ros.actions.Node`` it builds."""
    built = []

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class DeclareLaunchArgument:
        def __init__(self, name, default_value, description):
            self.name, self.default_value = name, default_value

    stubs = {"launch": types.ModuleType("launch"), "launch.actions": types.ModuleType("launch.actions"),
             "launch.substitutions": types.ModuleType("launch.substitutions"),
             "launch_ros": types.ModuleType("launch_ros"), "launch_ros.actions": types.ModuleType("launch_ros.actions")}
    stubs["launch"].LaunchDescription = list
    stubs["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument
    stubs["launch.actions"].OpaqueFunction = OpaqueFunction
    stubs["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    stubs["launch_ros.actions"].Node = lambda **kw: built.append(kw) or kw
    for name, mod in stubs.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for k in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("allegro_tracking_launch_stubbed",
                                                  REPO / "launch" / "allegro_tracking.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    context = {a.name: a.default_value for a in ld if isinstance(a, DeclareLaunchArgument)}
    context.update(launch_args or {})
    opaque = [a for a in ld if isinstance(a, OpaqueFunction)]
    assert len(opaque) == 1
    opaque[0].function(context)
    return built


def _transports(profile: Path) -> dict:
    """transport_id -> (type, its element) of a Fast DDS profile, and the participant's user transports."""
    root = ET.parse(profile).getroot()
    descs = {d.findtext(f"{NS}transport_id"): d for d in root.iter(f"{NS}transport_descriptor")}
    return descs


def test_default_launch_profile_reaches_other_hosts(monkeypatch):
    """Every node of a plain ``ros2 launch`` gets the shm_udp profile: shared memory + UDPv4 with
    no interface allow-list and nothing that overrides the user's discovery settings; the launch
    sets no ROS_* variable (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_STATIC_PEERS reach
    the nodes from the user's environment unchanged)."""
    nodes = _run_launch_file(monkeypatch)
    assert len(nodes) == 3
    for kw in nodes:
        env = kw["additional_env"]
        assert not [k for k in env if k.startswith("ROS_")], env
        profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
        assert profile.name == "fastdds_shm_udp.xml" and profile.is_file()
        root = ET.parse(profile).getroot()
        present = [tag for tag in DISCOVERY_OVERRIDES if root.find(f".//{NS}{tag}") is not None]
        assert not present, f"{profile.name} narrows or overrides discovery: {present}"
        descs = _transports(profile)
        assert sorted(d.findtext(f"{NS}type") for d in descs.values()) == ["SHM", "UDPv4"]
        participant = root.find(f"{NS}participant")
        assert participant.get("is_default_profile") == "true"
        used = [t.text for t in participant.iter(f"{NS}transport_id")]
        assert sorted(used) == sorted(descs)  # both in use, and only these (builtin ones off)
        # the shared-memory segment holds a whole 640x480 rgb8 image (0.9 MB; the default is 512 kB)
        shm = next(d for d in descs.values() if d.findtext(f"{NS}type") == "SHM")
        assert int(shm.findtext(f"{NS}segment_size")) >= 640 * 480 * 3


def test_one_hosts_share_of_the_graph(monkeypatch):
    """``nodes:=refinement_node`` (the GPU host): one node, with the same lab profile."""
    nodes = _run_launch_file(monkeypatch, {"nodes": "refinement_node"})
    assert [kw["name"] for kw in nodes] == ["refinement_node"]
    assert Path(nodes[0]["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds_shm_udp.xml"


def test_loopback_launch_option_keeps_the_allow_list(monkeypatch):
    for single in ("false", "true"):
        nodes = _run_launch_file(monkeypatch, {"dds_transport": "loopback", "single_process": single})
        for kw in nodes:
            profile = Path(kw["additional_env"]["FASTDDS_DEFAULT_PROFILES_FILE"])
            assert profile.name == "fastdds_loopback_shm.xml"
            udp = next(d for d in _transports(profile).values() if d.findtext(f"{NS}type") == "UDPv4")
            assert [a.text for a in udp.iter(f"{NS}address")] == ["127.0.0.1"]


def test_users_profile_file_wins_and_bad_choice_is_readable(monkeypatch, tmp_path):
    own = tmp_path / "lab.xml"
    own.write_text("<profiles/>")
    for transport in ("shm_udp", "loopback"):
        nodes = _run_launch_file(monkeypatch, {"dds_transport": transport},
                                 env={"FASTDDS_DEFAULT_PROFILES_FILE": str(own)})
        # not overridden: the node inherits the user's variable from the launch's environment
        assert all("FASTDDS_DEFAULT_PROFILES_FILE" not in kw["additional_env"] for kw in nodes)
    with pytest.raises(ValueError, match="'shm' is now 'loopback'"):
        _run_launch_file(monkeypatch, {"dds_transport": "shm"})


def test_demo_tests_and_benchmarks_choose_loopback(monkeypatch):
    """Everything this repository starts on a build machine is on loopback: the env every test
    fixture and the demo build, the demo's transport, and the benchmarks' variants."""
    from hp_ros.ros_process import loopback_env
    from hp_ros.tools import demo

    for k in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "HP_ROS_DDS_TRANSPORT"):
        monkeypatch.delenv(k, raising=False)
    env = loopback_env(domain_id=7, base={"ROS_STATIC_PEERS": "192.0.2.7", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["ROS_LOCALHOST_ONLY"] == "1"
    assert "ROS_STATIC_PEERS" not in env  # a user's static peers would be contacted even under LOCALHOST
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds_loopback_shm.xml"
    assert inspect.signature(demo.run_pipeline).parameters["transport"].default == "loopback"
    assert 'transport="loopback"' in inspect.getsource(demo.run)  # the CLI says so itself
    spec = importlib.util.spec_from_file_location("bench_graph_probe", REPO / "benchmarks" / "bench_graph.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # "udp" is the rmw default transport under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (loopback_env)
    assert {v["transport"] for v in bench.VARIANTS.values()} <= {"loopback", "udp"}
    for path in sorted((REPO / "benchmarks").glob("bench_*.py")):
        text = path.read_text()
        if path.name == "bench_two_hosts.py":  # measures the lab profile between two namespaces it makes
            assert "veth_hosts.TwoHosts()" in text and "hosts.command(" in text
            continue
        assert "shm_udp" not in text, f"{path.name} asks for the lab profile"
