"""Shared pytest fixtures for hp_ros."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HP_ROS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


# --- ROS 2 processes over loopback DDS -------------------------------------------------------

@pytest.fixture
def ros_env(monkeypatch) -> dict:
    """Loopback-only DDS environment with a fresh domain id for this test.

    Also applied to ``os.environ`` (for in-process rclpy), so a test may call
    ``rclpy.init`` directly. Pass the returned dict as ``env`` to subprocesses.
    """
    from hp_ros.ros_process import loopback_env, pick_domain_id

    env = loopback_env(domain_id=pick_domain_id())
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "RMW_IMPLEMENTATION", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture
def ros_node(ros_env):
    """An rclpy node in its own context (loopback env applied); shut down after the test."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("hp_ros_test_probe", context=ctx)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.fixture
def start_process(ros_env, tmp_path, request):
    """Factory: ``start_process(cmd, name=None) -> NodeProcess`` under the test's ROS env.

    Every process is stopped at teardown; when the test failed, their logs are printed.
    """
    from hp_ros.ros_process import NodeProcess

    procs = []

    def start(cmd, name=None, extra_env=None):
        env = dict(ros_env)
        env.update(extra_env or {})
        p = NodeProcess(cmd, log_dir=tmp_path / "logs", env=env, name=name)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for p in procs:
            print(f"----- log of {p.name} ({' '.join(p.cmd)}) -----\n{p.log_text()[-4000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_collection_modifyitems(config, items):
    """ROS tests get up to two re-runs (pytest-rerunfailures).

    Fast DDS over loopback on this 2-core machine occasionally delivers a sample of a reliable
    stream seconds late when the suite's other processes load the CPU (seen in the node tests:
    9-10 of 12 frames in about one run of four). A re-run repeats every assertion; core tests,
    which do not depend on transport timing, are never re-run.
    """
    for item in items:
        if item.get_closest_marker("ros") is not None and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=2))
