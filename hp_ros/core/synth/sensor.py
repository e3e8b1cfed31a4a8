"""RealSense-like sensor noise on exact renders and joint angles (numpy; each function draws from
the ``rng`` it is given, so the order of calls fixes the numbers).

Sensors
-------
* joint states at ``joint_rate_hz`` (100 Hz) with Gaussian encoder noise ``encoder_noise_std``
  (rad) plus an optional constant per-joint bias ``joint_bias_std``; names = ``hand.joint_names``.
* images at ``fps`` (30 Hz), 640 x 480, default intrinsics fx = fy = 615, cx = 322, cy = 247
  (a RealSense D435 colour stream at 640x480 reports values of this size).
* depth (mm, uint16, aligned to colour) = z-depth + Gaussian noise with
  ``sigma = depth_noise_coeff * z**2`` (default 0.0037 m^-1: Intel's RMS model
  ``z^2 * subpixel / (focal * baseline)`` with subpixel 0.08, focal 430 px, baseline 50 mm,
  i.e. ~0.9 mm at 0.5 m), rounded to mm; holes (0) at random small blobs and, with
  probability ``depth_edge_hole_prob``, at depth discontinuities (> 1 cm between neighbours).
* RGB: the shaded render (:mod:`.render`) plus Gaussian pixel noise ``rgb_noise_std``, rounded
  to 8 bits.
"""
from __future__ import annotations

import functools

import numpy as np

from .data import SynthConfig


def _encoder_readings(q_true: np.ndarray, cfg: SynthConfig, rng) -> np.ndarray:
    """Published joint positions ``(Nj, J)`` from the true ones ``q_true`` ``(Nj, J)``: a constant
    per-joint bias (``joint_bias_std``, drawn first) plus white encoder noise."""
    bias = rng.normal(0.0, cfg.joint_bias_std, size=q_true.shape[1]) if cfg.joint_bias_std > 0 else 0.0
    return q_true + bias + rng.normal(0.0, 1.0, size=q_true.shape) * cfg.encoder_noise_std


@functools.lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    """``(65536,)`` float32 standard-normal quantiles at (i + 0.5) / 65536 (tails to +-4.3 sigma)."""
    from scipy.special import ndtri

    return ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def _standard_normal(rng, shape) -> np.ndarray:
    """Standard-normal noise ``shape`` float32 by table lookup of 16-bit uniform draws: ~5x faster
    than ``rng.standard_normal`` and indistinguishable after mm / 8-bit rounding."""
    return _normal_quantiles()[rng.integers(0, 65536, size=shape, dtype=np.uint16)]


def _noisy_rgb(linear_rgb: np.ndarray, cfg: SynthConfig, rng) -> np.ndarray:
    """``(H, W, 3)`` float32 0..255 -> uint8 with Gaussian sensor noise (``cfg.rgb_noise_std``).
    Consumes ``linear_rgb`` (modified in place)."""
    img = linear_rgb
    if cfg.rgb_noise_std > 0:
        noise = _standard_normal(rng, img.shape)
        noise *= np.float32(cfg.rgb_noise_std)
        img += noise
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _depth_mm(z: np.ndarray, cfg: SynthConfig, rng) -> np.ndarray:
    """RealSense-like depth ``(H, W)`` uint16 mm from the true z-depth ``z`` ``(H, W)`` metres
    (0 = no surface): noise growing with z^2, holes at depth edges and small random blobs."""
    H, W = z.shape
    z = np.asarray(z, np.float32)
    valid = z > 0
    zn = _standard_normal(rng, z.shape)
    zn *= np.float32(cfg.depth_noise_coeff)
    zn *= z
    zn *= z
    zn += z
    # holes at depth discontinuities (more than 1 cm between 4-neighbours)
    edge = np.zeros_like(valid)
    dzx = np.abs(np.diff(z, axis=1)) > 0.01
    dzy = np.abs(np.diff(z, axis=0)) > 0.01
    edge[:, 1:] |= dzx
    edge[:, :-1] |= dzx
    edge[1:] |= dzy
    edge[:-1] |= dzy
    holes = np.zeros_like(valid)
    on_edge = np.flatnonzero(edge)
    holes.flat[on_edge[rng.random(len(on_edge)) < cfg.depth_edge_hole_prob]] = True
    # random small blobs (specular / low-texture dropouts)
    n_blobs = rng.poisson(cfg.depth_hole_blobs) if cfg.depth_hole_blobs > 0 else 0
    for _ in range(n_blobs):
        cu, cv = rng.uniform(0, W), rng.uniform(0, H)
        ru, rv = rng.uniform(1.5, 6.0, size=2) * (W / 640.0)
        u0, u1 = max(int(cu - ru), 0), min(int(cu + ru) + 2, W)
        v0, v1 = max(int(cv - rv), 0), min(int(cv + rv) + 2, H)
        vv, uu = np.mgrid[v0:v1, u0:u1]
        holes[v0:v1, u0:u1] |= ((uu - cu) / ru) ** 2 + ((vv - cv) / rv) ** 2 <= 1.0
    zn *= np.float32(1000.0)
    np.rint(zn, out=zn)
    np.clip(zn, 1, 65535, out=zn)
    mm = zn.astype(np.uint16)
    mm[~valid | holes] = 0
    return mm
