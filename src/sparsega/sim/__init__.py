"""Synthetic scenes with exact ground truth and a MASt3R prediction simulator (no weights needed).

- :func:`make_scene` builds a seeded scene (a closed room holding a few spheres and boxes), places cameras in one of
  three layouts and ray-casts every pixel analytically (:mod:`.scenes`, :mod:`.render`, data in :mod:`.world`);
- :func:`simulate_predictions` turns that truth into pair predictions that look like MASt3R's (:mod:`.simulate`).
"""

from __future__ import annotations

from .render import render_scene
from .scenes import look_at, make_scene, scene_from_spec, write_truth
from .simulate import LazyPredictions, SimConfig, simulate_predictions
from .world import KINDS, Geometry, SceneSpec, SyntheticScene, base_focal

__all__ = [
    "KINDS",
    "Geometry",
    "LazyPredictions",
    "SceneSpec",
    "SimConfig",
    "SyntheticScene",
    "base_focal",
    "look_at",
    "make_scene",
    "render_scene",
    "scene_from_spec",
    "simulate_predictions",
    "write_truth",
]
