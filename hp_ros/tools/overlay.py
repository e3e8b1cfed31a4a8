"""Offline pictures of the tracking for a report folder: the object mesh at the estimate and at the
ground truth drawn over the camera image (what RViz would show, without RViz).

Per chosen frame one PNG ``overlays/frame_<k>.png``: the estimate's silhouette filled green with
its outline, the ground truth's outline red, and a caption (frame, time, ADD-S, rotation error);
``overlays.png`` puts them side by side. :func:`write_overlays` picks frames spread over the
sequence plus the worst one (largest ADD-S).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["silhouette", "draw_overlay", "pick_frames", "write_overlays"]

EST_COLOR, GT_COLOR = (40, 220, 60), (255, 40, 40)  # RGB


def silhouette(vertices: np.ndarray, faces: np.ndarray, T_cam_obj: np.ndarray, K: np.ndarray,
               shape: tuple) -> np.ndarray:
    """Bool ``(H, W)`` mask of the mesh (``vertices`` ``(V, 3)`` object frame, ``faces`` ``(F, 3)``) at
    ``T_cam_obj`` ``(4, 4)`` through ``K`` ``(3, 3)`` (faces behind the camera are left out)."""
    import cv2

    p = vertices @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    z = p[:, 2]
    uv = (p @ K.T)[:, :2] / np.maximum(z, 1e-6)[:, None]
    ok = np.all(z[faces] > 1e-3, axis=1)
    tri = np.round(uv[faces[ok]] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    mask = np.zeros(shape, np.uint8)
    if len(tri):
        cv2.fillPoly(mask, list(tri), 1, lineType=cv2.LINE_8, shift=2)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))  # hairline gaps between faces
    return mask.astype(bool)


def draw_overlay(rgb: np.ndarray, mask_est: np.ndarray, mask_gt: np.ndarray, caption: str) -> np.ndarray:
    """``rgb`` ``(H, W, 3)`` uint8 with the estimate's silhouette (filled, outlined) and the ground
    truth's outline drawn, and ``caption`` on top."""
    import cv2

    out = rgb.astype(np.float32).copy()
    out[mask_est] = 0.6 * out[mask_est] + 0.4 * np.asarray(EST_COLOR, np.float32)
    out = out.astype(np.uint8)
    for mask, color in ((mask_est, EST_COLOR), (mask_gt, GT_COLOR)):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, 2, lineType=cv2.LINE_AA)
    cv2.rectangle(out, (0, 0), (out.shape[1], 44), (0, 0, 0), -1)
    cv2.putText(out, caption, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(out, "green: estimate   red outline: ground truth", (8, 37), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (200, 200, 200), 1, cv2.LINE_AA)
    return out


def pick_frames(errors: dict, n: int = 6) -> list:
    """Up to ``n`` frame indices: spread over the frames with an estimate (``errors``: index ->
    ADD-S), the worst one included."""
    idx = sorted(errors)
    if not idx:
        return []
    spread = [idx[int(round(f * (len(idx) - 1)))] for f in np.linspace(0.05, 0.95, max(n - 1, 1))]
    worst = max(idx, key=lambda i: errors[i])
    return sorted(set(spread) | {worst})[:n] if worst in spread else sorted(set(spread[: n - 1]) | {worst})


def write_overlays(folder, rgb_of, K: np.ndarray, obj, stamps: np.ndarray, T_gt: np.ndarray, est: dict,
                   n: int = 6) -> list:
    """Write the overlays of up to ``n`` frames into ``folder`` (created); returns the files.

    ``rgb_of(k)`` -> ``(H, W, 3)`` uint8 camera image of frame ``k``; ``stamps`` ``(Nf,)`` frame
    stamps [ns]; ``T_gt`` ``(Nf, 4, 4)`` ground truth; ``est``: stamp -> estimated ``(4, 4)``."""
    import cv2

    from hp_ros.core import metrics

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    v, f = obj.vertices.double().numpy(), obj.faces.numpy()
    pts = obj.surface_points(500).double().numpy()
    idx = {int(s): k for k, s in enumerate(stamps)}
    have = {idx[s]: T for s, T in est.items() if s in idx}
    adds = {k: float(metrics.add_s(T_gt[k][None], T[None], pts)[0]) for k, T in have.items()}
    files, tiles = [], []
    for k in pick_frames(adds, n):
        rgb = rgb_of(k)
        m_est = silhouette(v, f, have[k], K, rgb.shape[:2])
        m_gt = silhouette(v, f, T_gt[k], K, rgb.shape[:2])
        rot = float(metrics.rotation_error_deg(T_gt[k][None], have[k][None])[0])
        t = (int(stamps[k]) - int(stamps[0])) * 1e-9
        img = draw_overlay(rgb, m_est, m_gt, f"frame {k}  t={t:.2f} s  ADD-S {100 * adds[k]:.2f} cm  "
                                             f"rotation {rot:.2f} deg")
        path = folder / f"frame_{k:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        files.append(path)
        tiles.append(cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA))
    if tiles:
        cols = 3
        blank = np.zeros_like(tiles[0])
        rows = [np.hstack(tiles[i:i + cols] + [blank] * (cols - len(tiles[i:i + cols])))
                for i in range(0, len(tiles), cols)]
        sheet = folder.parent / "overlays.png"
        cv2.imwrite(str(sheet), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
        files.append(sheet)
    return files
