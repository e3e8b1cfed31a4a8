"""The refinement's loss terms ("priors"), one registry entry each, and the one weight type (ROS-free).

A term is a :class:`Prior`: its name (the weight's key and the name it is reported under), the
function that computes it unweighted, its default weight (0 = off unless asked), the data it needs,
and the ``terms=`` name (the ``RefinePose`` service's ``terms[]``) that switches it on. Everything
else is derived from :data:`PRIORS`: the weights (:class:`Weights`), the accepted term names
(:func:`term_names`), :func:`hp_ros.core.physics.physics_loss`, the refinement's loss
(:class:`hp_ros.core.refine.Refiner`) and the refinement node's parameters (``default_terms`` and
one ``weights.<name>`` parameter per entry).

Kinds of term (``Prior.kind``), each with its own input type and calling convention:

* ``"image"``: ``fn(ImageInputs) -> (N,)``, one value per rendered image (``N = R`` candidate poses
  x ``B`` frames, RoI side ``S``); the refinement averages them over the window's frames. These are
  the only terms of the coarse search and of the first Adam stage.
* ``"physics"``: ``fn(PhysicsInputs) -> ()`` for one candidate's window of ``B`` frames; on only
  when the frames have a hand (joints and camera->hand), in the second Adam stage.
* ``"correction"``: ``fn(CorrectionInputs) -> ()``: a prior on a hand correction the refinement
  optimises (shared by the candidates).

A term is computed when its weight is > 0 and every name in ``needs`` is available (see
:data:`DATA`); terms that compare frames (``min_frames`` > 1) are 0 for shorter windows.

Adding a prior: write its function (tensor shapes as above) and add one :class:`Prior` line to
:data:`PRIORS` (or call :func:`register`). Loss totals add the weighted terms in registry order.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from hp_ros.core import se3
from hp_ros.core.losses import mask_l2
from hp_ros.core.physics import (DEFAULT_CONTACT_THRESHOLD, contact_mask, contact_sliding_loss, hand_smoothness_loss,
                                 object_oscillation_loss, object_smoothness_loss, penetration_loss)
from hp_ros.core.refine_depth import depth_loss
from hp_ros.core.sdf import signed_distance_world

__all__ = ["DATA", "KINDS", "Prior", "PRIORS", "register", "unregister", "term_names", "priors_of_kind",
           "Weights", "ImageInputs", "PhysicsInputs", "CorrectionInputs", "physics_terms"]

KINDS = ("image", "physics", "correction")

# the data a term can need (``Prior.needs``), by kind; the inputs' attribute of the same name holds it
DATA = {
    "image": {
        "object_mask": "observed object mask",
        "hand_mask": "observed hand mask",
        "hand": "the hand rendered (joints and camera->hand known): its soft mask",
        "rgb": "observed colour image (the object is then rendered with its colours)",
        "depth": "measured aligned depth",
    },
    "physics": {
        "hand_points": "hand surface points and their signed distances / contacts",
        "object_points": "object sample points under the window's poses",
        "hand_motion": "the hand's joint angles and/or base poses over the window",
    },
    "correction": {
        "camera_hand": "the optimised camera->hand correction",
        "joint_offsets": "the optimised joint offsets",
    },
}


@dataclass(frozen=True)
class Prior:
    """One loss term of the registry.

    Attributes:
        name: weight key and reported term name.
        fn: the unweighted term (calling convention of its ``kind``, module docstring).
        weight: default weight (>= 0; 0 = off unless a caller sets one).
        needs: names of :data:`DATA` ``[kind]`` the term needs; without them it is not computed.
        term: the ``terms=`` / service name that switches it on (several entries may share one);
            None = not switchable (on whenever its weight and data are there).
        kind: ``"image"``, ``"physics"`` or ``"correction"``.
        min_frames: frames the term compares (2: the previous frame, 3: two previous); it is 0 for a
            shorter window.
        doc: one line for the documentation.
    """

    name: str
    fn: Callable
    weight: float
    needs: Tuple[str, ...]
    term: Optional[str]
    kind: str
    min_frames: int = 1
    doc: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"prior {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        unknown = [n for n in self.needs if n not in DATA[self.kind]]
        if unknown:
            raise ValueError(f"prior {self.name!r}: unknown data {unknown} for kind {self.kind!r}; "
                             f"known: {list(DATA[self.kind])}")
        _check_weight(self.name, self.weight)


def _check_weight(name: str, v) -> float:
    if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"weight {name} must be a finite number >= 0, got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------------- inputs
@dataclass
class ImageInputs:
    """What an ``"image"`` term sees: ``N = R B`` rendered images (candidate-major) of side ``S``, and
    the observed RoI crops of the ``B`` frames (``per_image`` repeats them for the candidates).

    Attributes:
        R, B: candidates and frames; config: the refinement's :class:`~hp_ros.core.refine.RefineConfig`.
        soft_object: ``(N, S, S)`` soft object silhouette (occluded by the hand); hard_object: ``(N, S, S)``
            bool, the object visible; soft_hand: ``(N, S, S)`` or None (no hand rendered).
        rendered_rgb: ``(N, 3, S, S)`` object colours or None; rendered_depth: ``(N, S, S)`` [m].
        object_mask, hand_mask: ``(B, S, S)`` in [0, 1] or None; rgb: ``(B, 3, S, S)`` or None;
        depth: ``(B, S, S)`` [m] (0 = none) or None; valid: ``(B, S, S)`` pixels inside the image.
    """

    R: int
    B: int
    config: object
    soft_object: torch.Tensor
    hard_object: torch.Tensor
    soft_hand: Optional[torch.Tensor]
    rendered_rgb: Optional[torch.Tensor]
    rendered_depth: torch.Tensor
    object_mask: Optional[torch.Tensor]
    hand_mask: Optional[torch.Tensor]
    rgb: Optional[torch.Tensor]
    depth: Optional[torch.Tensor]
    valid: torch.Tensor

    @property
    def hand(self):
        return self.soft_hand

    def per_image(self, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """A frame-indexed ``(B, ...)`` tensor repeated for the candidates: ``(N, ...)``."""
        return None if x is None else x.unsqueeze(0).expand(self.R, *x.shape).reshape(self.R * self.B, *x.shape[1:])


@dataclass
class PhysicsInputs:
    """What a ``"physics"`` term sees: one candidate's window of ``B`` frames (oldest first).

    Attributes:
        hand_points: ``(B, N, 3)`` hand surface points (camera frame); sdf: ``(B, N)`` their signed
            distances to the object [m]; contact: ``(B, N)`` bool (within the contact threshold).
        T_obj: ``(B, 4, 4)`` object poses; object_points: ``(B, V, 3)`` object samples under them
            (filled only when a computed term needs them).
        hand_q: ``(B, J)`` or None; hand_base: ``(B, 4, 4)`` or None (hand smoothness).
    """

    hand_points: torch.Tensor
    sdf: torch.Tensor
    contact: torch.Tensor
    T_obj: torch.Tensor
    object_points: Optional[torch.Tensor] = None
    hand_q: Optional[torch.Tensor] = None
    hand_base: Optional[torch.Tensor] = None

    @property
    def hand_motion(self):
        return None if self.hand_q is None and self.hand_base is None else (self.hand_q, self.hand_base)


@dataclass
class CorrectionInputs:
    """What a ``"correction"`` term sees: camera_hand ``(6,)`` and joint_offsets ``(J,)``, each None
    when not optimised."""

    camera_hand: Optional[torch.Tensor] = None
    joint_offsets: Optional[torch.Tensor] = None


# ----------------------------------------------------------------------------------- terms
def _mask_object(x: ImageInputs) -> torch.Tensor:
    return mask_l2(x.soft_object, x.per_image(x.object_mask), x.per_image(x.valid))


def _mask_hand(x: ImageInputs) -> torch.Tensor:
    return mask_l2(x.soft_hand, x.per_image(x.hand_mask), x.per_image(x.valid))


def _rgb(x: ImageInputs) -> torch.Tensor:
    """L2 of the colours inside the observed object mask, summed over channels; with
    ``config.rgb_gain`` the rendered colours get a per-image, per-channel gain (closed form, no
    gradient) first, so that the scene's lighting does not bias the pose."""
    m = x.per_image(x.object_mask)[:, None]                     # (N, 1, S, S)
    obs = x.per_image(x.rgb)
    ren = x.rendered_rgb
    if x.config.rgb_gain:
        with torch.no_grad():
            num = (ren * obs * m).flatten(2).sum(-1)
            den = (ren * ren * m).flatten(2).sum(-1).clamp_min(1e-6)
            gain = (num / den).clamp(0.3, 3.0)
        ren = ren * gain[..., None, None]
    err = ((ren - obs) ** 2).sum(1, keepdim=True) * m
    return err.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def _depth(x: ImageInputs) -> torch.Tensor:
    return depth_loss(x.rendered_depth, x.hard_object, x.per_image(x.depth), x.per_image(x.hand_mask),
                      x.config.depth_scale)


def _penetration(x: PhysicsInputs) -> torch.Tensor:
    return penetration_loss(x.sdf)


def _contact_sliding(x: PhysicsInputs) -> torch.Tensor:
    return contact_sliding_loss(x.hand_points, x.T_obj, x.contact)


def _object_smoothness(x: PhysicsInputs) -> torch.Tensor:
    return object_smoothness_loss(x.object_points)


def _hand_smoothness(x: PhysicsInputs) -> torch.Tensor:
    return hand_smoothness_loss(x.hand_q, x.hand_base)


def _oscillation(x: PhysicsInputs) -> torch.Tensor:
    return object_oscillation_loss(x.object_points)


def _calibration_prior(x: CorrectionInputs) -> torch.Tensor:
    return (x.camera_hand ** 2).sum()


def _joint_offset_prior(x: CorrectionInputs) -> torch.Tensor:
    return (x.joint_offsets ** 2).sum()


# The registry. Rendering terms are pixel means (unitless, ~ fraction of wrong pixels); physics terms
# are in m^2 (hand joints rad^2), so a weight w makes a 1 mm violation cost about w * 1e-6 per point.
PRIORS: Dict[str, Prior] = {p.name: p for p in (
    Prior("mask_object", _mask_object, 1.0, ("object_mask",), "mask", "image",
          doc="L2 of the rendered and observed object masks"),
    Prior("mask_hand", _mask_hand, 1.0, ("hand_mask", "hand"), "mask", "image",
          doc="L2 of the rendered and observed hand masks"),
    Prior("rgb", _rgb, 0.05, ("rgb", "object_mask"), "rgb", "image",
          doc="L2 of the object's colours inside the observed object mask (lighting gain fitted)"),
    Prior("depth", _depth, 0.5, ("depth",), "depth", "image",
          doc="robust (Geman-McClure) rendered vs measured object depth, in [0, 1) per pixel"),
    Prior("penetration", _penetration, 2.0e3, ("hand_points",), "penetration", "physics",
          doc="relu(-sdf)^2 of the hand points, summed over points (m^2)"),
    Prior("contact_sliding", _contact_sliding, 1.0e2, ("hand_points",), "sliding", "physics", min_frames=2,
          doc="motion of contact points in the object frame between frames (m^2)"),
    Prior("object_smoothness", _object_smoothness, 10.0, ("object_points",), "smoothness", "physics", min_frames=2,
          doc="object vertex displacement between frames (m^2)"),
    Prior("hand_smoothness", _hand_smoothness, 0.0, ("hand_motion",), "smoothness", "physics", min_frames=2,
          doc="hand joint / base change between frames (rad^2, m^2; physics_loss only: the refinement "
              "optimises no hand motion)"),
    Prior("oscillation", _oscillation, 10.0, ("object_points",), "oscillation", "physics", min_frames=3,
          doc="second difference of object vertex positions (m^2)"),
    Prior("calibration_prior", _calibration_prior, 1.0e2, ("camera_hand",), None, "correction",
          doc="|v|^2 (m^2) + |w|^2 (rad^2) of the camera->hand correction"),
    Prior("joint_offset_prior", _joint_offset_prior, 1.0e2, ("joint_offsets",), None, "correction",
          doc="sum of squared joint offsets (rad^2)"),
)}


def register(prior: Prior) -> Prior:
    """Add ``prior`` at the end of :data:`PRIORS` (ValueError when its name is taken)."""
    if prior.name in PRIORS:
        raise ValueError(f"a prior named {prior.name!r} is registered already")
    PRIORS[prior.name] = prior
    return prior


def unregister(name: str) -> None:
    """Remove a prior (tests that registered one)."""
    del PRIORS[name]


def term_names() -> Tuple[str, ...]:
    """The ``terms=`` / service names, in registry order."""
    return tuple(dict.fromkeys(p.term for p in PRIORS.values() if p.term is not None))


def priors_of_kind(kind: str) -> Tuple[Prior, ...]:
    return tuple(p for p in PRIORS.values() if p.kind == kind)


# ----------------------------------------------------------------------------------- weights
class Weights(Mapping):
    """Weights of the registry's terms (0 disables a term): a read-only mapping name -> float, also
    readable as attributes (``w.penetration``). Unnamed terms take the registry's default.

    ``Weights()`` are the defaults; ``Weights(penetration=0.0)`` or ``Weights({"rgb": 0.1})`` override
    some. ValueError on an unknown name or a weight that is not a finite number >= 0.
    """

    def __init__(self, values: Optional[Mapping] = None, **overrides):
        given = {**(values or {}), **overrides}
        unknown = [k for k in given if k not in PRIORS]
        if unknown:
            raise ValueError(f"unknown weight(s) {unknown}; known: {list(PRIORS)}")
        self._w = {name: (_check_weight(name, given[name]) if name in given else p.weight)
                   for name, p in PRIORS.items()}

    def __getitem__(self, name: str) -> float:
        return self._w[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._w)

    def __len__(self) -> int:
        return len(self._w)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._w[name]
        except KeyError:
            raise AttributeError(f"no weight {name!r}; known: {list(self._w)}") from None

    def __repr__(self) -> str:
        return "Weights(" + ", ".join(f"{k}={v:g}" for k, v in self._w.items()) + ")"

    def replace(self, **changes) -> "Weights":
        """A copy with some weights changed."""
        return Weights({**self._w, **changes})

    def restricted(self, terms: Optional[Sequence[str]]) -> "Weights":
        """A copy with only the named terms (see :func:`term_names`) kept, the other switchable terms
        set to 0; None or empty = all."""
        if not terms:
            return self.replace()
        names = term_names()
        unknown = [t for t in terms if t not in names]
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; valid terms: {list(names)}")
        return self.replace(**{p.name: 0.0 for p in PRIORS.values() if p.term is not None and p.term not in terms})

    def without(self, kind: str) -> "Weights":
        """A copy with every term of ``kind`` at 0 (``without("physics")``: the rendering terms)."""
        return self.replace(**{p.name: 0.0 for p in priors_of_kind(kind)})

    def active(self, kind: str, available) -> Tuple[Prior, ...]:
        """The priors of ``kind`` with a weight > 0 whose needs are all in ``available``."""
        return tuple(p for p in priors_of_kind(kind) if self._w[p.name] > 0 and all(n in available for n in p.needs))

    @property
    def uses_physics(self) -> bool:
        return any(self._w[p.name] > 0 for p in priors_of_kind("physics"))


def physics_terms(object_sdf, hand_points_world: torch.Tensor, T_world_object: torch.Tensor, weights: Weights,
                  object_vertices: Optional[torch.Tensor] = None, hand_q: Optional[torch.Tensor] = None,
                  hand_base: Optional[torch.Tensor] = None, contact_threshold: Optional[float] = None):
    """The physics terms of one window: ``(total, terms, contact)`` - the weighted sum (scalar), the
    unweighted terms that were computed (weight > 0 and data there; registry order) and the contact
    mask ``(B, N)``. Arguments as :func:`hp_ros.core.physics.physics_loss`."""
    threshold = DEFAULT_CONTACT_THRESHOLD if contact_threshold is None else contact_threshold
    sdf, _ = signed_distance_world(object_sdf, hand_points_world, T_world_object)
    x = PhysicsInputs(hand_points_world, sdf, contact_mask(sdf, threshold), T_world_object, hand_q=hand_q,
                      hand_base=hand_base)
    if hand_q is None and hand_base is None:
        available = {"hand_points", "object_points"}
    else:
        available = {"hand_points", "object_points", "hand_motion"}
    active = weights.active("physics", available)
    if any("object_points" in p.needs for p in active):
        verts = object_sdf.vertices if object_vertices is None else object_vertices
        x.object_points = se3.transform_points(T_world_object, verts.to(T_world_object.dtype))
    total = hand_points_world.new_zeros(())
    terms: Dict[str, torch.Tensor] = {}
    for p in active:
        terms[p.name] = p.fn(x)
        total = total + weights[p.name] * terms[p.name]
    return total, terms, x.contact
