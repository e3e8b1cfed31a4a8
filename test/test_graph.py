"""The graph has one source of truth: the launch file, the demo and the tests read hp_ros.graph."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import yaml

from hp_ros import graph

REPO = Path(__file__).resolve().parents[1]


def test_every_node_module_has_a_main_and_a_console_script():
    import importlib.metadata as md

    scripts = {e.name: e.value for e in md.entry_points(group="console_scripts")}
    for spec in graph.NODES:
        mod = importlib.import_module(spec.module)
        assert callable(getattr(mod, "main", None)), spec.module
        assert scripts.get(spec.executable) == f"{spec.module}:main"


def test_params_file_has_a_section_per_node_and_nothing_else():
    data = yaml.safe_load((REPO / "config" / "allegro_tracking.yaml").read_text())
    assert set(data) == {f"/{graph.NAMESPACE}/{n.name}" for n in graph.NODES}
    for section in data.values():
        assert "ros__parameters" in section


def test_process_commands_follow_launch_arguments():
    cmds = dict(graph.process_commands({"camera_namespace": "/cam", "object_mesh": "builtin:soup_can",
                                        "joint_states_topic": "/allegro/joint_states", "use_sim_time": "true",
                                        "single_process": "false"}))
    assert set(cmds) == {n.name for n in graph.NODES}
    for name, cmd in cmds.items():
        joined = " ".join(cmd)
        assert f"-r __ns:=/{graph.NAMESPACE}" in joined and f"-r __node:={name}" in joined
        assert "-p object_mesh:=builtin:soup_can" in joined
        assert "-p use_sim_time:=true" in joined
        assert "-r /camera/camera/color/image_raw:=/cam/color/image_raw" in joined
        assert "-r /joint_states:=/allegro/joint_states" in joined
        params_file = cmd[cmd.index("--params-file") + 1]
        assert Path(params_file).is_file()


def test_default_invocation_has_no_remappings():
    for spec, params, params_file, remaps, ros_args in graph.node_invocations({}):
        assert remaps == []
        assert params["use_sim_time"] is False
        assert "camera_to_hand" not in params  # empty launch argument: from /tf_static


def test_launch_description_loads_when_launch_ros_is_installed():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; a ROS install has it")
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument

    path = REPO / "launch" / "allegro_tracking.launch.py"
    spec = importlib.util.spec_from_file_location("allegro_tracking_launch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    declared = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert declared == set(graph.LAUNCH_ARGUMENTS)


def test_launch_file_builds_nodes_from_the_graph_module():
    """Without launch_ros we can still check the launch file reads hp_ros.graph (no copy of it)."""
    src = (REPO / "launch" / "allegro_tracking.launch.py").read_text()
    assert "graph.node_invocations" in src and "graph.LAUNCH_ARGUMENTS" in src
    for spec in graph.NODES:
        assert spec.name not in src  # node names come from the graph, not from the launch file


def test_default_is_one_process_per_node():
    """The measured faster variant on 2 cores (README, bench_graph.py) is what a plain launch gets."""
    assert [name for name, _ in graph.process_commands()] == [n.name for n in graph.NODES]


def test_single_process_command_is_one_process_without_a_node_name_remap():
    """single_process:=true: one graph process; a __node remap would rename all three nodes in it."""
    args = {"camera_namespace": "/cam", "object_mesh": "builtin:soup_can", "single_process": "true"}
    cmds = graph.process_commands(args)
    assert [name for name, _ in cmds] == ["graph_process"]
    cmd = cmds[0][1]
    joined = " ".join(cmd)
    assert graph.GRAPH_PROCESS[1] in cmd and "__node:=" not in joined
    assert f"-r __ns:=/{graph.NAMESPACE}" in joined and "-p object_mesh:=builtin:soup_can" in joined
    assert "-r /camera/camera/color/image_raw:=/cam/color/image_raw" in joined
    import importlib.metadata as md

    scripts = {e.name: e.value for e in md.entry_points(group="console_scripts")}
    assert scripts.get(graph.GRAPH_PROCESS[0]) == f"{graph.GRAPH_PROCESS[1]}:main"


def test_nodes_argument_starts_one_hosts_share():
    """``nodes:=`` picks the nodes of one host of a graph across machines (README: Across machines)."""
    cmds = dict(graph.process_commands({"nodes": "refinement_node"}))
    assert list(cmds) == ["refinement_node"]
    cmds = dict(graph.process_commands({"nodes": " tracking_node,segmentation_node "}))
    assert list(cmds) == ["segmentation_node", "tracking_node"]  # graph order
    assert list(dict(graph.process_commands({"nodes": "all"}))) == [n.name for n in graph.NODES]
    with pytest.raises(ValueError, match="unknown node"):
        graph.process_commands({"nodes": "refinement"})
    with pytest.raises(ValueError, match="single_process"):
        graph.process_commands({"nodes": "refinement_node", "single_process": "true"})
