"""Segmentation speed and quality on a synthetic 640x480 sequence (depth|colour backends, hand
mask with markers). Last line: JSON with frame_ms (median core time per frame) and object_iou."""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from hp_ros.core import segmentation as S
from hp_ros.core.hand import HandModel
from hp_ros.core.metrics import mask_iou
from hp_ros.core.synth import SynthConfig, generate_sequence


def main() -> None:
    torch.set_num_threads(1)
    seq = generate_sequence(SynthConfig(duration_s=1.0, fps=15, seed=5))
    hand = HandModel.default()
    cfg = S.SegmenterConfig(object_backend="depth", hsv_ranges=(0, 100, 60, 180, 255, 255),
                            workspace_box=(0.005, -0.15, -0.08, 0.25, 0.15, 0.20),
                            marker_colors=np.asarray(seq.marker_colors).reshape(-1) * 255,
                            marker_radius=seq.marker_radius)
    sg = S.Segmenter(seq.K, seq.width, seq.height, hand, cfg)
    times, ious, hand_ious = [], [], []
    for rep in range(2):
        for k in range(seq.num_frames):
            j = min(np.searchsorted(seq.joint_stamps_ns, seq.frame_stamps_ns[k]), len(seq.joint_stamps_ns) - 1)
            t = time.perf_counter()
            depth = S.depth_to_metres(seq.depth_mm[k], "16UC1")
            r = sg.segment(seq.rgb[k], depth, seq.joint_positions[j], seq.T_cam_hand_published)
            times.append(time.perf_counter() - t)
            if rep == 1:
                ious.append(mask_iou(r.object_mask, seq.object_mask[k])[0])
                hand_ious.append(mask_iou(r.hand_mask, seq.hand_mask[k])[0])
    t_ms = float(np.median(times[seq.num_frames:]) * 1000)
    print(f"frames {seq.num_frames}, median {t_ms:.2f} ms, p90 {np.percentile(times, 90) * 1000:.2f} ms; "
          f"object IoU {np.mean(ious):.3f}, hand IoU {np.mean(hand_ious):.3f}")
    print(json.dumps({"frame_ms": round(t_ms, 2), "object_iou": round(float(np.mean(ious)), 4),
                      "hand_iou": round(float(np.mean(hand_ious)), 4)}))


if __name__ == "__main__":
    main()
