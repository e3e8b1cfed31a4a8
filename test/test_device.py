"""The compute device (``device`` of refinement_node, ``model_device`` of segmentation_node):
``cpu`` or ``cuda[:N]``, torch and Warp on the same one; CUDA asked for where it is not usable
-> one clear error in the log and the CPU. This machine has no GPU: the CUDA path itself is not
run here; the CPU path and the fallback are."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hp_ros.core import device as dev

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this test is about a machine without CUDA")


def test_parse_device_accepts_cpu_and_cuda_only():
    assert dev.parse_device("cpu") == ("cpu", None)
    assert dev.parse_device("cuda") == ("cuda", 0)
    assert dev.parse_device("CUDA:2") == ("cuda", 2)
    for bad in ("gpu", "cuda:", "cuda:-1", "cpu:0", "cuda:0:1", "", "mps"):
        with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
            dev.parse_device(bad)
        assert "'cpu', 'cuda' or 'cuda:N'" in dev.device_error(bad)
    assert dev.device_error("cuda:1") is None


def test_cpu_is_used_as_asked():
    c = dev.resolve_device("cpu")
    assert c.torch == torch.device("cpu") and c.warp == "cpu" and c.fallback is None


@needs_no_cuda
def test_cuda_without_cuda_falls_back_to_cpu_with_the_reason():
    for spec in ("cuda", "cuda:1"):
        c = dev.resolve_device(spec)
        assert c.torch == torch.device("cpu") and c.warp == "cpu"
        assert c.requested == spec and "no usable CUDA" in c.fallback


def test_missing_cuda_device_index_falls_back(monkeypatch):
    """torch sees one GPU, the parameter asks for the third: CPU, and the reason says so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    c = dev.resolve_device("cuda:2")
    assert c.torch.type == "cpu" and "sees 1 CUDA device(s), not cuda:2" in c.fallback


def test_mesh_sdf_queries_on_its_device_only():
    from hp_ros.core.sdf import MeshSDF

    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    sdf = MeshSDF(v, f, sign="normal", device=dev.resolve_device("cpu").torch)
    d, n = sdf.query(torch.tensor([[0.1, 0.1, 0.1], [2.0, 0.0, 0.0]]))
    assert d[0] < 0 < d[1] and n.shape == (2, 3)
    with pytest.raises(ValueError, match="runs Warp on cpu"):
        sdf.query(torch.zeros(2, 3, device="meta"))


def test_refiner_on_the_resolved_device_returns_cpu_results():
    """The refinement on a device resolved from a parameter (here ``cuda`` on a CPU-only machine
    ends on the CPU): it refines, and the result's tensors are CPU tensors the node can turn into
    messages."""
    from hp_ros.core.camera import Camera
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.refine import FrameObservation, RefineConfig, Refiner, perturb_pose
    from hp_ros.core.se3 import make_pose

    choice = dev.resolve_device("cuda" if not torch.cuda.is_available() else "cpu")
    obj = ObjectModel.builtin("cracker_box")
    cam = Camera.from_intrinsics(600.0, 600.0, 160.0, 120.0, 320, 240)
    T = make_pose(torch.eye(3), torch.tensor([0.0, 0.0, 0.6]))
    mask = _object_mask(obj, cam, T)
    refiner = Refiner(obj, None, RefineConfig(max_iterations=40, num_hypotheses=0), device=choice.torch)
    T0 = perturb_pose(T, 0.01, 0.05, torch.Generator().manual_seed(0))
    res = refiner.refine([FrameObservation(object_mask=mask)], cam, T0, terms=["mask"])
    assert res.T_cam_obj.device.type == "cpu" and res.T_cam_obj_init.device.type == "cpu"
    err0 = float((T0[:3, 3] - T[:3, 3]).norm())
    err = float((res.T_cam_obj[0, :3, 3] - T[:3, 3]).norm())
    assert err < 0.5 * err0, (err0, err)
    assert res.mask_iou[0] > 0.9


def _object_mask(obj, cam, T) -> np.ndarray:
    """Hard silhouette ``(H, W)`` bool of the object at pose ``T`` (the differentiable renderer's)."""
    from hp_ros.core import se3
    from hp_ros.core.render import render

    with torch.no_grad():
        out = render([(se3.transform_points(T[None], obj.vertices.float()), obj.faces)], cam.K[None].float(),
                     (cam.height, cam.width))
    return out.hard_masks[0, 0].numpy()


# --- the nodes -----------------------------------------------------------------------------------

def _wait_log(proc, text: str, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log_text():
            return True
        if not proc.alive():
            return text in proc.log_text()
        time.sleep(0.1)
    return False


@pytest.mark.ros
@needs_no_cuda
def test_refinement_node_falls_back_to_cpu_with_one_error(ros_node, start_process):
    """``device:=cuda:0`` on this CPU-only machine: one ERROR line naming the device and the reason,
    the service runs (on the CPU) and answers; ``device:=gpu`` stops the node with one message."""
    from hp_ros_msgs.srv import RefinePose

    from hp_ros import graph
    from hp_ros.ros_process import python_module_cmd
    from rostest_utils import spin_until

    proc = start_process(python_module_cmd("hp_ros.nodes.refinement_node", "--ros-args", "-r", "__ns:=/hp_ros",
                                           "-p", "device:=cuda:0"), name="refinement_cuda")
    client = ros_node.create_client(RefinePose, graph.SERVICES["refine_pose"])
    assert spin_until(ros_node, client.service_is_ready, 90), proc.log_text()
    fut = client.call_async(RefinePose.Request())
    assert spin_until(ros_node, fut.done, 30), proc.log_text()
    assert not fut.result().success and "no camera_info" in fut.result().message  # served, on the CPU
    log = proc.log_text()
    errors = [ln for ln in log.splitlines() if "ERROR" in ln]
    assert len(errors) == 1, log
    assert "'cuda:0' is not usable here" in errors[0] and "no usable CUDA" in errors[0] \
        and "refining on the CPU" in errors[0]
    assert "device cpu" in log and proc.alive()

    bad = start_process(python_module_cmd("hp_ros.nodes.refinement_node", "--ros-args", "-p", "device:=gpu"),
                        name="refinement_bad_device")
    deadline = time.monotonic() + 90
    while bad.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bad.proc.returncode == 2, bad.log_text()
    assert "device: device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in bad.log_text()


@pytest.mark.ros
@needs_no_cuda
def test_segmentation_model_backend_falls_back_to_cpu_with_one_error(ros_node, start_process):
    from hp_ros import graph
    from hp_ros.ros_process import python_module_cmd
    from rostest_utils import wait_for_subscribers

    proc = start_process(python_module_cmd("hp_ros.nodes.segmentation_node", "--ros-args", "-r", "__ns:=/hp_ros",
                                           "-p", "object_backend:=model", "-p", "model_device:=cuda"),
                         name="segmentation_cuda")
    assert _wait_log(proc, "model_device 'cuda' is not usable here"), proc.log_text()
    errors = [ln for ln in proc.log_text().splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "the model backend fits on the CPU" in errors[0], proc.log_text()
    # the node finished starting (its image subscription is there) and runs
    assert wait_for_subscribers(ros_node, graph.CAMERA_TOPICS["color_image"], 1, 90), proc.log_text()
    assert proc.alive(), proc.log_text()
