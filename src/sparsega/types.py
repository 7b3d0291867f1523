"""Typed values passed between pipeline stages: :class:`PairPrediction` and :class:`AlignConfig`.

Conventions used throughout the package:

- pixel coordinates are ``(x, y) = (column, row)``, integer pixel centres;
- pointmaps are ``(H, W, 3)`` float32 arrays in a camera frame (OpenCV: x right, y down, z forward);
- ``cam2w`` is a ``(4, 4)`` camera-to-world matrix (OpenCV convention);
- images are indexed ``0 .. N-1`` in the order the user gave them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .devices import check_device
from .errors import ConfigError, InputError

CANONICAL_MODES = ("avg-angle", "avg-reldepth")
KINEMATIC_MODES = (
    "mst",
    "hclust-ward",
    "hclust-single",
    "hclust-complete",
    "hclust-average",
    "hclust-weighted",
    "hclust-centroid",
    "hclust-median",
)
LR_SCHEDULES = ("cosine", "linear")
DTYPES = ("float32", "float64")
POSE_INITS = ("procrustes", "global", "identity")
# the DUSt3R fallback's regression points. "anchors" (default): each anchor of the image that holds a match,
# regressed onto the other view's pointmap at the anchor's own pixel, one target per anchor. "matches" (the
# reference's): each matched pixel of the image (its matches with every partner, duplicates kept) regressed onto
# the pointmap at the TOP-LEFT pixel of its anchor block (the reference samples ``[::subsample]``). Measured on
# ../shared/bench: equal or better cameras and depth on every fallback scene, and 5x fewer targets (the
# fallback's cost per target is that of a match side: "matches" made the 32 %-fallback orbit 1.7x slower)
FALLBACK_TARGETS = ("anchors", "matches")
# loss implementations: "kernel" = the compiled numba iteration (CPU), "autograd" = its plain torch twin (any
# device); "auto" = kernel on CPU when the loss gammas have a compiled form, else autograd
LOSS_BACKENDS = ("auto", "kernel", "autograd")


@dataclass(frozen=True)
class PairPrediction:
    """Symmetric network prediction for one image pair ``(i, j)`` plus its matches.

    Naming follows MASt3R: ``ptsAB`` is the pointmap of image A expressed in the camera frame of the first image of
    the decoding direction that produced it; so ``pts11``/``pts21`` come from the pass (i, j) and are in i's frame,
    ``pts22``/``pts12`` come from the pass (j, i) and are in j's frame.

    Attributes:
        i, j: image indices (i != j, except for a single image paired with itself).
        pts11: (H1, W1, 3) float32, image i in frame i.     conf11: (H1, W1) float32 >= 1.
        pts21: (H2, W2, 3) float32, image j in frame i.     conf21: (H2, W2) float32 >= 1.
        pts22: (H2, W2, 3) float32, image j in frame j.     conf22: (H2, W2) float32 >= 1.
        pts12: (H1, W1, 3) float32, image i in frame j.     conf12: (H1, W1) float32 >= 1.
        xy1: (M, 2) int64 matched pixels (x, y) in image i.  xy2: (M, 2) int64 in image j.
        match_conf: (M,) float32 match confidences (> 0).
        score: (geometric mean of the four mean confidences, sum of match confidences, M) as the reference's
            pair score; the kinematic tree uses the match count.
    """

    i: int
    j: int
    pts11: np.ndarray
    conf11: np.ndarray
    pts21: np.ndarray
    conf21: np.ndarray
    pts22: np.ndarray
    conf22: np.ndarray
    pts12: np.ndarray
    conf12: np.ndarray
    xy1: np.ndarray
    xy2: np.ndarray
    match_conf: np.ndarray
    score: tuple[float, float, int] | None = None

    @property
    def shape1(self) -> tuple[int, int]:
        """(H1, W1) of image i."""
        return int(self.conf11.shape[0]), int(self.conf11.shape[1])

    @property
    def shape2(self) -> tuple[int, int]:
        """(H2, W2) of image j."""
        return int(self.conf22.shape[0]), int(self.conf22.shape[1])

    @property
    def n_matches(self) -> int:
        return int(len(self.match_conf))

    @staticmethod
    def header(
        i: int,
        j: int,
        shape1: tuple[int, int],
        shape2: tuple[int, int],
        xy1: np.ndarray,
        xy2: np.ndarray,
        match_conf: np.ndarray,
        score: tuple[float, float, int] | None = None,
    ) -> PairPrediction:
        """A prediction with real matches but zero-stride placeholder pointmaps and confidences of the given
        ``(H, W)`` shapes, which cost no memory. Header protocol: a lazy sequence of predictions may offer
        ``pair_header(k)`` returning this for item ``k``, so that the alignment indexes the pairs without reading
        their pointmaps (``sparsega.alignment.inputs.PairView``). Such a sequence may also set
        ``thread_safe_reads = True`` when items can be read from another thread: the alignment then reads the next
        pairs on a background thread while it fuses (``sparsega.alignment.reading.ReadAhead``)."""

        def maps(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            h, w = shape
            return np.broadcast_to(np.float32(0), (h, w, 3)), np.broadcast_to(np.float32(1), (h, w))

        (p1, c1), (p2, c2) = maps(shape1), maps(shape2)
        return PairPrediction(i, j, p1, c1, p2, c2, p2, c2, p1, c1, xy1, xy2, match_conf, score)

    def swapped(self) -> PairPrediction:
        """The same prediction seen as pair (j, i)."""
        return PairPrediction(
            i=self.j,
            j=self.i,
            pts11=self.pts22,
            conf11=self.conf22,
            pts21=self.pts12,
            conf21=self.conf12,
            pts22=self.pts11,
            conf22=self.conf11,
            pts12=self.pts21,
            conf12=self.conf21,
            xy1=self.xy2,
            xy2=self.xy1,
            match_conf=self.match_conf,
            score=self.score,
        )

    def validate(self) -> None:
        """Check shapes and dtypes; raise :class:`InputError` naming the pair and the field otherwise."""
        name = f"pair ({self.i}, {self.j})"
        h1, w1 = self.conf11.shape[:2] if self.conf11.ndim == 2 else (-1, -1)
        h2, w2 = self.conf22.shape[:2] if self.conf22.ndim == 2 else (-1, -1)
        expect = {
            "pts11": (h1, w1, 3),
            "conf11": (h1, w1),
            "pts12": (h1, w1, 3),
            "conf12": (h1, w1),
            "pts21": (h2, w2, 3),
            "conf21": (h2, w2),
            "pts22": (h2, w2, 3),
            "conf22": (h2, w2),
        }
        for key, shape in expect.items():
            arr = getattr(self, key)
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise InputError(f"{name}: {key} has shape {got}, expected {shape}")
        m = len(self.match_conf)
        for key in ("xy1", "xy2"):
            arr = getattr(self, key)
            if not isinstance(arr, np.ndarray) or arr.shape != (m, 2):
                got = getattr(arr, "shape", type(arr).__name__)
                raise InputError(f"{name}: {key} has shape {got}, expected ({m}, 2)")
        if m:
            for key, (h, w) in (("xy1", (h1, w1)), ("xy2", (h2, w2))):
                xy = getattr(self, key)
                if xy.min() < 0 or (xy[:, 0] >= w).any() or (xy[:, 1] >= h).any():
                    raise InputError(f"{name}: {key} has pixels outside the {w}x{h} image")


@dataclass(frozen=True)
class AlignConfig:
    """Every hyper-parameter of the sparse global alignment.

    Defaults are the reference's except where measured better on ``shared/bench`` (see ``benchmarks/README.md``):
    the start (``pose_init="global"``), the stage-1 check and the fallback targets. The reference's own behaviour:
    ``pose_init="identity", fallback_targets="matches"`` (the stage-1 check then never runs, there is no start).

    Field names are a public contract (``align(preds, niter1=100)``). Use :meth:`replace` to override by name: an
    unknown name is a :class:`ConfigError` naming it.
    """

    subsample: int = 8
    matching_conf_thr: float = 5.0
    canonical_mode: str = "avg-angle"
    kinematic_mode: str = "hclust-ward"
    lr1: float = 0.07
    # stage-1 peak lr from a pairwise start (pose_init="global" or "procrustes"); None = lr1. Measured on the public
    # shared/bench suite: lr1 (0.07) meets the reference's accuracy on every scene, 0.007 loses it on the hard orbit
    # (ATE 0.040 vs 0.0074) and 0.02 on a jumps scene. 0.007 was once chosen for an N=512 walk (earlier float32
    # engine, 192x256 simulator); not remeasured with the compiled engine
    lr1_procrustes: float | None = None
    niter1: int = 300
    loss_gamma1: float = 1.5
    lr2: float = 0.01
    niter2: int = 300
    loss_gamma2: float = 0.5
    fallback_gamma: float = 1.1
    fallback_weight: float = 0.01
    fallback_targets: str = "anchors"
    lr_schedule: str = "cosine"
    lr_end: float = 0.0
    shared_intrinsics: bool = False
    opt_pp: bool = True
    opt_depth: bool = True
    clean_depth: bool = True
    device: str = "auto"  # see sparsega.devices: CUDA, else MPS, else CPU; resolved by align()
    dtype: str = "float32"
    pose_init: str = "global"
    # also run stage 2 straight from the start (no stage 1) and keep that run only when its final stage-2 loss is
    # lower than the stage-1 run's by more than stage1_check_margin (relative). Measured on shared/bench with
    # pose_init="global" (26 scenes, 15 of them outside the public suite): the 64-view walk's stage 1 drifts from
    # 1.65 deg to 9 deg median rotation error while the stage-2 loss prefers the undrifted run by 0.55 %; where the
    # stage-1 run was the accurate one the direct run was lower by at most 0.11 %, where the direct run was clearly
    # better (walk 64, a jumps scene) lower by 0.33 % or more. Costs one more stage 2.
    stage1_check: bool = True
    stage1_check_margin: float = 0.002
    loss_backend: str = "auto"
    # known cameras (see sparsega.align): None = "True when given"
    fix_intrinsics: bool | None = None
    fix_poses: bool | None = None
    pose_prior_weight: float = 10.0
    progress: bool = True
    # threads of the compiled CPU match kernel; 0 = auto (sparsega.alignment.kernels.common.kernel_threads): one
    # thread below PARALLEL_MIN_MATCHES trusted matches, where a parallel region is short and waits for a thread
    # descheduled by another process (up to 2.3x slower, measured: benchmarks/README.md), every available core from
    # it. Results are bit-identical for any value.
    threads: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("niter1", "niter2"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise bad(name, "must be an integer >= 0")
        if not isinstance(self.threads, (int, np.integer)) or isinstance(self.threads, bool) or self.threads < 0:
            raise bad("threads", "must be an integer >= 0 (0 = auto: by problem size)")
        if not isinstance(self.subsample, (int, np.integer)) or self.subsample <= 0 or 16 % self.subsample:
            raise bad("subsample", "must be a positive integer dividing 16 (1, 2, 4, 8 or 16)")
        for name in ("lr1", "lr2", "lr1_procrustes"):
            v = getattr(self, name)
            if v is None and name == "lr1_procrustes":
                continue
            if not np.isfinite(v) or v <= 0:
                raise bad(name, "must be a finite number > 0")
        for name in ("loss_gamma1", "loss_gamma2", "fallback_gamma"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise bad(name, "must be a finite number > 0")
        for name in ("fallback_weight", "lr_end", "pose_prior_weight", "stage1_check_margin"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        if not np.isfinite(self.matching_conf_thr):
            raise bad("matching_conf_thr", "must be finite")
        choices: dict[str, tuple[str, ...]] = {
            "canonical_mode": CANONICAL_MODES,
            "fallback_targets": FALLBACK_TARGETS,
            "kinematic_mode": KINEMATIC_MODES,
            "lr_schedule": LR_SCHEDULES,
            "dtype": DTYPES,
            "pose_init": POSE_INITS,
            "loss_backend": LOSS_BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(allowed)}")
        object.__setattr__(self, "device", check_device(self.device))
        if self.loss_backend == "kernel" and self.device not in ("cpu", "auto"):
            raise bad("loss_backend", "the compiled kernel runs on CPU only; use 'autograd' or 'auto' on a GPU")
        if self.device == "mps" and self.dtype == "float64":
            raise bad("dtype", "Apple MPS has no float64; use float32 on 'mps'")

    def replace(self, **overrides: Any) -> AlignConfig:
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown alignment option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    @property
    def torch_dtype(self) -> Any:
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["PairPrediction", "AlignConfig"]
