"""The README stays true: every declared parameter, topic and service is documented."""
from __future__ import annotations

from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

pytest.importorskip("rclpy")


def _declared():
    from hp_ros.nodes import refinement_node, segmentation_params, tracking_node
    from hp_ros.nodes.params import COMMON_PARAMS

    return {"common": COMMON_PARAMS, "segmentation_node": segmentation_params.SEG_PARAMS,
            "tracking_node": tracking_node.OWN_PARAMS, "refinement_node": refinement_node.OWN_PARAMS}


def test_every_parameter_is_in_the_readme_with_its_default():
    missing = []
    for node, params in _declared().items():
        for name, p in params.items():
            if f"| `{name}` |" not in README:
                missing.append(f"{node}.{name}")
    assert not missing, f"parameters missing from README: {missing}"


def test_parameter_tables_match_the_declarations():
    """Defaults and meanings too: the tables are what scripts/readme_params.py renders."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "readme_params.py"
    spec = importlib.util.spec_from_file_location("readme_params", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.current(README) == gen.render(), "README parameter tables are stale: run scripts/readme_params.py --write"


def test_every_topic_and_service_is_in_the_readme():
    from hp_ros import graph

    names = [t for k, t in graph.TOPICS.items()] + list(graph.SERVICES.values()) + list(graph.CAMERA_TOPICS.values())
    assert not [n for n in names if n not in README]


def test_readme_commands_exist():
    from hp_ros.cli import COMMANDS

    for cmd in COMMANDS:
        assert f"hp-ros {cmd}" in README
    assert "make demo" in README and "make test" in README
