"""Adding images to an aligned scene: the new views are aligned against the old ones, whose cameras stay fixed
(or act as soft priors), and the result is the union, in the old scene's frame and scale.

Predictions index the union: the old views keep their indices ``0..N-1`` (the scene's order) and the new ones
follow (``N..N+M-1``). Only the old views that share a prediction with the rest take part in the optimisation
(their cameras as known poses and intrinsics, :mod:`.known`); the others are copied as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import GraphError, InputError
from ..scene import Scene
from ..types import AlignConfig, PairPrediction
from .components import subset_predictions


def align_extend(
    scene: Scene,
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    fix_old: bool = True,
    **overrides: Any,
) -> Scene:
    """The union of ``scene`` and the new views of ``predictions`` (module docstring).

    Args:
        scene: the aligned scene (network pixels).
        predictions: pairs over the union; every new view must appear in one, and some pair must join a new view
            to an old one.
        images, image_paths: colours and names of the NEW views only.
        fix_old: old cameras fixed exactly (default) or soft priors (``pose_prior_weight``); old intrinsics are
            fixed either way.
    """
    from .api import align

    n_old = scene.n_images
    preds = list(predictions)
    if not preds:
        raise InputError("no pair predictions to extend the scene with")
    used = sorted({int(k) for p in preds for k in (p.i, p.j)})
    n_total = max(used[-1] + 1, n_old + (len(images) if images is not None else 0))
    new = list(range(n_old, n_total))
    if not new:
        raise InputError(f"the predictions only reference the scene's {n_old} views: no new image")
    missing = [k for k in new if k not in used]
    if missing:
        raise GraphError(f"new image(s) {missing} appear in no pair")
    old_used = [k for k in used if k < n_old]
    if not old_used:
        raise GraphError("the new images share no pair with the scene's views")
    for name, seq in (("images", images), ("image_paths", image_paths)):
        if seq is not None and len(seq) != len(new):
            raise InputError(f"{len(seq)} {name} given for {len(new)} new views")
    cfg = (config or AlignConfig()).replace(fix_poses=fix_old, fix_intrinsics=True, **overrides)
    pos = {k: p for p, k in enumerate(used)}
    sub = align(
        subset_predictions(preds, used),
        cfg,
        images=[scene.images[k] if k < n_old else images[k - n_old] for k in used] if images is not None else None,
        image_paths=[scene.image_paths[k] if k < n_old else _name(image_paths, k - n_old, k) for k in used],
        known_poses={pos[k]: scene.cam2w[k].astype(np.float64) for k in old_used},
        known_intrinsics={pos[k]: scene.intrinsics[k].astype(np.float64) for k in old_used},
    )

    # where each view of the union comes from: the old scene (kept as it was) or the new alignment
    src = [(scene, k) if k < n_old and (fix_old or k not in pos) else (sub, pos[k]) for k in range(n_total)]

    def union(field: str) -> list[Any]:
        return [getattr(s, field)[i] for s, i in src]

    sizes = scene.original_sizes
    new_sizes = [[d.shape[1], d.shape[0]] for d in sub.depthmaps]
    return Scene(
        cam2w=np.stack(union("cam2w")),
        intrinsics=np.stack(union("intrinsics")),
        depthmaps=union("depthmaps"),
        confidences=union("confidences"),
        sparse_xy=union("sparse_xy"),
        images=[scene.images[k] if k < n_old else sub.images[pos[k]] for k in range(n_total)],
        image_paths=[scene.image_paths[k] if k < n_old else sub.image_paths[pos[k]] for k in range(n_total)],
        net_to_orig=np.concatenate([scene.net_to_orig, np.tile(np.eye(3), (len(new), 1, 1))]),
        original_sizes=None if sizes is None else np.concatenate([sizes, [new_sizes[pos[k]] for k in new]]),
        info={
            **sub.info,
            "extend": {"n_old": n_old, "n_new": len(new), "old_views_used": old_used, "fix_old": fix_old},
        },  # fmt: skip
    )


def _name(paths: Sequence[str] | None, i: int, k: int) -> str:
    return str(paths[i]) if paths is not None else f"view_{k:03d}"


__all__ = ["align_extend"]
