"""The extended Kalman filter equations, on plain matrices (no hand, object or camera in here).

Notation (``n`` error-state size, ``m`` measurement size)::

    predict:   P <- F P F^T + Q                                  F, Q, P (n, n)
    innovate:  r = z ⊟ h(x)  (m,),   S = H P H^T + R  (m, m),    H (m, n), R (m, m)
    gate:      NIS = r^T S^-1 r  <=  chi2.ppf(probability, m)
    gain:      K = P H^T S^-1  (n, m)   (rows of frozen states zeroed: Schmidt / consider update)
    correct:   dx = K r,   x <- x ⊞ dx,
               P <- (I - K H) P (I - K H)^T + K R K^T            (Joseph form: valid for any K)

The residual ``r`` and the state correction ``x ⊞ dx`` belong to the observation model and the
state (:mod:`~hp_ros.core.ekf.observations`, :mod:`~hp_ros.core.ekf.state`); float64 numpy
throughout (tiny matrices: no autograd, no torch on the hot path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.stats import chi2

__all__ = ["UpdateResult", "refused", "predict_covariance", "innovation", "NISGate", "kalman_gain",
           "joseph_update"]


@dataclass
class UpdateResult:
    """Outcome of one measurement update."""

    kind: str
    accepted: bool
    nis: float
    gate: float
    dim: int
    reason: str = ""


def refused(kind: str, reason: str, dim: int = 0) -> UpdateResult:
    """An update that was not applied (no NIS computed)."""
    return UpdateResult(kind, False, float("nan"), float("nan"), dim, reason)


def predict_covariance(P: np.ndarray, F: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``F P F^T + Q`` ``(n, n)``."""
    return F @ P @ F.T + Q


def innovation(P: np.ndarray, r: np.ndarray, H: np.ndarray, R: np.ndarray):
    """Innovation covariance ``S = H P H^T + R`` ``(m, m)`` and the normalised innovation squared
    ``r^T S^-1 r`` of the residual ``r`` ``(m,)``. Raises ``np.linalg.LinAlgError`` for a singular ``S``."""
    S = H @ P @ H.T + R
    Sinv_r = np.linalg.solve(S, r)
    return S, float(r @ Sinv_r)


class NISGate:
    """Chi-square gate on the NIS: ``chi2.ppf(probability, dim)``, cached (one call costs ~0.7 ms)."""

    def __init__(self):
        self._gates = {}

    def __call__(self, probability: float, dim: int) -> float:
        key = (probability, dim)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = float(chi2.ppf(probability, dim))
        return gate


def kalman_gain(P: np.ndarray, H: np.ndarray, S: np.ndarray, frozen: Optional[np.ndarray] = None) -> np.ndarray:
    """``K = P H^T S^-1`` ``(n, m)``; ``frozen``: state indices whose rows are zeroed (the update must
    not correct them - a Schmidt / consider update; :func:`joseph_update` keeps ``P`` right for it)."""
    K = np.linalg.solve(S, H @ P).T  # S symmetric: (S^-1 H P)^T = P H^T S^-1
    if frozen is not None:
        K[frozen] = 0.0
    return K


def joseph_update(P: np.ndarray, K: np.ndarray, H: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Posterior covariance ``(I - K H) P (I - K H)^T + K R K^T`` ``(n, n)``, symmetrised (Joseph
    form: correct for any gain, e.g. one with frozen rows, and keeps ``P`` positive semidefinite)."""
    A = np.eye(P.shape[0]) - K @ H
    P = A @ P @ A.T + K @ R @ K.T
    return (P + P.T) / 2
