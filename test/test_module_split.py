"""Issue 25's module splits of the segmentation and the demo keep the old import paths: a name
moved to a sibling module is the same object where it was imported from before."""
from __future__ import annotations


def test_model_backend_names_stay_importable_from_model_py():
    from hp_ros.core import segmentation
    from hp_ros.core.segmentation import model, model_fit, sdf_grid

    assert model.ModelFit is model_fit.ModelFit is segmentation.ModelFit
    assert model.icp_pose_covariance is model_fit.icp_pose_covariance is segmentation.icp_pose_covariance
    assert model.warm_sdf_grid is sdf_grid.warm_sdf_grid
    assert set(model.__all__) <= set(vars(model))


def test_sdf_grid_is_built_once_per_model_and_settings():
    """warm_sdf_grid fills the cache the model fit then reads (same arrays, not a second build)."""
    from hp_ros.core.objects import ObjectModel
    from hp_ros.core.segmentation.sdf_grid import _sdf_grid, warm_sdf_grid

    obj = ObjectModel.builtin("soup_can")
    warm_sdf_grid(obj, grid_size=12, max_margin=0.02)
    first = _sdf_grid(obj, 1.2 * 0.02, 12)
    assert _sdf_grid(obj, 1.2 * 0.02, 12) is first
    lo, voxel, sdf, verts, faces = first
    assert sdf.dtype.name == "float32" and sdf.ndim == 3 and max(sdf.shape) >= 12 and voxel > 0
    assert _sdf_grid(obj, 1.2 * 0.02, 14) is not first  # other settings: a grid of their own


def test_demo_names_stay_importable_from_demo_py():
    from hp_ros.tools import demo, demo_listener, demo_score

    assert demo.Collector is demo_listener.Collector
    for name in ("score", "time_to_first_pose", "initial_pose", "offset_pose"):
        assert getattr(demo, name) is getattr(demo_score, name), name
