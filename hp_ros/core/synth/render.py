"""Exact renders of a sequence's frames (ray casting, :mod:`hp_ros.core.raycast`): scene
appearance, shading, markers, background; the sensor noise on top comes from :mod:`.sensor`.

* RGB: Lambertian shading (ambient + one directional light; light direction, intensities and
  background colours vary per seed) of per-vertex colours (object: ``ObjectModel.vertex_colors``;
  hand: ``HandModel.link_colors``); Gaussian pixel noise is added by :mod:`.sensor`.
* fingertip markers (``markers=True``): a coloured sphere of radius ``marker_radius`` (default:
  encloses the fingertip link, ~18 mm) centred on each fingertip point ``hand.fingertips(q)``, so
  an unoccluded marker's image centroid is the projected fingertip. Default colours thumb
  magenta, index cyan, middle orange, ring lime. Markers are paint: they are rendered (in the
  hand mask) but are not part of the contact geometry.
* background (``background=True``): a large, slightly tilted plane 0.8-1.0 m away whose colour
  varies smoothly; with it every pixel has a surface.

Instance ids in renders: 0 object, 1 hand, 2 markers, 3 background (``INSTANCE_*``).
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import numpy as np
import torch

from .assets import _hand_model, _object_model, _single_thread_torch
from .data import INSTANCE_BACKGROUND, INSTANCE_HAND, INSTANCE_MARKERS, INSTANCE_OBJECT, SynthConfig, SynthSequence
from .geometry import _random_unit, _rotvec_to_matrix
from .sensor import _depth_mm, _noisy_rgb


# ============================================================================ scene appearance

def _auto_marker_radius(hand) -> float:
    """A sphere around the fingertip point that encloses the fingertip link (98th percentile of the
    distances of its surface samples, +2 %): ~18 mm for the built-in hand. Markers are paint: the
    part of the ball that reaches into the object is simply hidden by it in the render."""
    tip_ids = [hand.link_index(n) for n in hand.fingertip_links]
    ids = hand.point_link_ids.numpy()
    pts = hand.local_surface_points.double().numpy()
    sel = np.isin(ids, tip_ids)
    if not sel.any():
        return 0.012
    return float(np.clip(np.percentile(np.linalg.norm(pts[sel], axis=1), 98) * 1.02, 0.006, 0.03))


def _scene_params(rng, cfg: SynthConfig, c0_palm: np.ndarray, T_cam_palm: np.ndarray) -> dict:
    """Lighting and background plane of a sequence (``SynthSequence.scene``), drawn per seed;
    ``c0_palm`` ``(3,)`` object centre in the palm frame, ``T_cam_palm`` ``(4, 4)``."""
    var = cfg.lighting_variation
    light = np.array([-0.3, -0.6, -1.0])
    if var:
        light = _rotvec_to_matrix(_random_unit(rng) * math.radians(rng.uniform(0, 35))) @ light
    light /= np.linalg.norm(light)
    c_cam = T_cam_palm[:3, :3] @ c0_palm + T_cam_palm[:3, 3]
    return dict(
        light_dir=light,                                                # towards the light, camera frame
        ambient=float(rng.uniform(0.25, 0.45)) if var else 0.35,
        diffuse=float(rng.uniform(0.55, 0.8)) if var else 0.65,
        light_color=(np.array([1.0, 1.0, 1.0]) + (rng.uniform(-0.06, 0.06, 3) if var else 0.0)),
        bg_distance=float(c_cam[2] + rng.uniform(0.3, 0.5)),
        bg_tilt=_random_unit(rng) * math.radians(rng.uniform(0, 20)),
        bg_colors=rng.uniform(0.15, 0.6, size=(4, 4, 3)) if var else np.full((4, 4, 3), 0.4),
    )


def _background_mesh(seq: SynthSequence):
    """A 6 m x 6 m plane (40 x 40 grid) at ``bg_distance``, tilted, with smooth colour variation."""
    sc = seq.scene
    n = 40
    u = np.linspace(-3.0, 3.0, n)
    X, Y = np.meshgrid(u, u)
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(n * n)], axis=1)
    R = _rotvec_to_matrix(sc["bg_tilt"])
    V = V @ R.T + np.array([0.0, 0.0, sc["bg_distance"]])
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    F = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    # bilinear colour field from a coarse 4x4 grid of random colours
    g = sc["bg_colors"]
    s = (X.ravel() + 3.0) / 6.0 * 3.0
    t = (Y.ravel() + 3.0) / 6.0 * 3.0
    i0, j0 = np.clip(s.astype(int), 0, 2), np.clip(t.astype(int), 0, 2)
    fs, ft = (s - i0)[:, None], (t - j0)[:, None]
    col = ((1 - fs) * (1 - ft) * g[j0, i0] + fs * (1 - ft) * g[j0, i0 + 1] + (1 - fs) * ft * g[j0 + 1, i0]
           + fs * ft * g[j0 + 1, i0 + 1])
    return V, F, col


@functools.lru_cache(maxsize=4)
def _unit_sphere():
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    return np.asarray(m.vertices), np.asarray(m.faces)


# ============================================================================ frames

class _FrameRenderer:
    """Renders the frames of one sequence.

    Speed: the camera and the background plane are fixed over a sequence, so the background's
    depth, ids and shaded colour are ray-cast once (:func:`_background_layer`, cached). Each frame
    then finds the nearest hits of the object, hand and markers alone (the background excluded)
    with :meth:`~hp_ros.core.raycast.RayCaster.render_hits` (rasterised primary visibility:
    cost ~ their image area), and keeps a foreground hit where it is nearer than the background:
    the same ids and depth as ray-casting everything together."""

    def __init__(self, seq: SynthSequence):
        from hp_ros.core.raycast import RayCaster

        cfg = seq.config
        self.seq = seq
        self.hand = _hand_model(None if cfg.hand_urdf is None else str(cfg.hand_urdf), cfg.naming)
        self.obj = _object_model(str(cfg.object), cfg.object_units)
        self.rc = RayCaster(seq.K, seq.width, seq.height, max_depth=20.0)
        self.obj_v = self.obj.vertices.double().numpy()
        self.obj_f = self.obj.faces.numpy()
        self.obj_c = self.obj.vertex_colors.double().numpy()
        self.hand_f = self.hand.mesh_faces.numpy()
        self.hand_c = self.hand.link_colors[self.hand.mesh_vert_link_ids.numpy()]
        sv, sf = _unit_sphere()
        self.marker_v = sv * seq.marker_radius
        self.marker_f = np.concatenate([sf + k * len(sv) for k in range(4)])
        self.marker_c = np.repeat(np.asarray(seq.marker_colors, float), len(sv), axis=0)
        self.bg = _background_layer(seq)
        self.T_base = torch.as_tensor(seq.cam_hand_frames())                 # (Nf, 4, 4) true, per frame

    def render(self, k: int) -> dict:
        from hp_ros.core.raycast import MeshInstance

        seq, cfg = self.seq, self.seq.config
        T = seq.T_cam_obj[k]
        obj_v = self.obj_v @ T[:3, :3].T + T[:3, 3]
        hv, _, _ = self.hand.posed_mesh(torch.as_tensor(seq.q_frames_true[k])[None], base=self.T_base[k:k + 1])
        hand_v = hv[0].numpy().astype(np.float64)
        inst = [MeshInstance(obj_v, self.obj_f, self.obj_c), MeshInstance(hand_v, self.hand_f, self.hand_c)]
        if cfg.markers:
            mv = (self.marker_v[None] + seq.fingertips_cam_true[k][:, None]).reshape(-1, 3)
            inst.append(MeshInstance(mv, self.marker_f, self.marker_c))
        else:
            inst.append(MeshInstance(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), None))
        pix, out = self.rc.render_hits(inst)
        # z-test against the cached background: a foreground hit wins where it is nearer
        bg_z = self.bg["depth"][pix]
        front = (out.depth > 0) & ((bg_z == 0) | (out.depth < bg_z))
        sel = pix[front]
        depth = self.bg["depth"].copy()
        depth[sel] = out.depth[front]
        instance = self.bg["instance"].copy()
        instance[sel] = out.instance[front]
        lin = self.bg["linear_rgb"].copy()
        lin[sel] = _shade_linear(out.normal[front], out.color[front], seq.scene)
        H, W = seq.height, seq.width
        depth, instance = depth.reshape(H, W), instance.reshape(H, W)
        rng = np.random.default_rng([int(cfg.seed), 7919, int(k)])  # per-frame stream: order independent
        return dict(rgb=_noisy_rgb(lin.reshape(H, W, 3), cfg, rng), depth_mm=_depth_mm(depth, cfg, rng),
                    object_mask=instance == INSTANCE_OBJECT,
                    hand_mask=(instance == INSTANCE_HAND) | (instance == INSTANCE_MARKERS),
                    instance=instance, depth_true=depth)


_BACKGROUND_CACHE: dict = {}


def _background_layer(seq: SynthSequence) -> dict:
    """The background plane alone, ray-cast through every pixel: flat ``depth`` ``(H*W,)``
    float32 (0 = no hit), ``instance`` ``(H*W,)`` int32 (INSTANCE_BACKGROUND or -1) and
    ``linear_rgb`` ``(H*W, 3)`` float32 (shaded, 0..255, before noise and rounding). Identical for
    every frame of a sequence (fixed camera, plane and light), so cached per scene."""
    from hp_ros.core.raycast import MeshInstance, RayCaster

    cfg, sc = seq.config, seq.scene
    key = (bool(cfg.background), seq.width, seq.height, np.asarray(seq.K, np.float64).tobytes(),
           np.concatenate([np.ravel(np.asarray(sc[n], np.float64)) for n in
                           ("bg_distance", "bg_tilt", "bg_colors", "light_dir", "ambient", "diffuse",
                            "light_color")]).tobytes())
    hit = _BACKGROUND_CACHE.get(key)
    if hit is not None:
        return hit
    n = seq.width * seq.height
    if cfg.background:
        out = RayCaster(seq.K, seq.width, seq.height, max_depth=20.0).render([MeshInstance(*_background_mesh(seq))])
        depth = out.depth.reshape(n)
        layer = dict(depth=depth, instance=np.where(depth > 0, INSTANCE_BACKGROUND, -1).astype(np.int32),
                     linear_rgb=_shade_linear(out.normal.reshape(n, 3), out.color.reshape(n, 3), sc))
    else:
        layer = dict(depth=np.zeros(n, np.float32), instance=np.full(n, -1, np.int32),
                     linear_rgb=np.zeros((n, 3), np.float32))
    for v in layer.values():
        v.setflags(write=False)  # shared between renderers: frames work on copies
    if len(_BACKGROUND_CACHE) >= 4:
        _BACKGROUND_CACHE.pop(next(iter(_BACKGROUND_CACHE)))
    _BACKGROUND_CACHE[key] = layer
    return layer


def _shade_linear(normal: np.ndarray, color: np.ndarray, scene: dict) -> np.ndarray:
    """Lambert shading of ray hits: ``normal``/``color`` ``(..., 3)`` -> ``(..., 3)`` float32 in
    0..255 (before noise and rounding); misses (zero colour) stay black."""
    lam = np.clip(normal @ np.asarray(scene["light_dir"], np.float32), 0.0, None)[..., None]
    gain = (np.asarray(scene["light_color"], np.float64) * 255.0).astype(np.float32)
    return color * (np.float32(scene["ambient"]) + np.float32(scene["diffuse"]) * lam) * gain


def iter_rendered_frames(seq: SynthSequence) -> Iterator[dict]:
    """Render every frame of ``seq`` in order: dicts with ``rgb`` (H, W, 3) uint8, ``depth_mm``
    (H, W) uint16, ``object_mask``/``hand_mask`` (H, W) bool, ``instance`` (H, W) int32 and
    ``depth_true`` (H, W) float32 metres (noise-free z-depth). Deterministic per frame."""
    r = _FrameRenderer(seq)
    for k in range(seq.num_frames):
        with _single_thread_torch():
            frame = r.render(k)
        yield frame


def render_frame(seq: SynthSequence, k: int) -> dict:
    """Render one frame (same output as :func:`iter_rendered_frames`)."""
    if not 0 <= k < seq.num_frames:
        raise ValueError(f"frame index {k} out of range [0, {seq.num_frames})")
    with _single_thread_torch():
        return _FrameRenderer(seq).render(k)
