"""A MASt3R-like prediction simulator: exact synthetic truth -> :class:`~sparsega.types.PairPrediction` values
with per-pass unknown scale, a smooth multiplicative depth distortion, a small focal error, additive noise,
confidences that drop where the injected error grows, and grid matches with pixel noise and outliers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..types import PairPrediction
from .world import SyntheticScene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimConfig:
    """How :func:`simulate_predictions` corrupts the truth. Defaults resemble a good MASt3R prediction.

    Pointmaps (per decoding pass (a, b), both maps of the pass share the scale and the focal error):

    - ``scale_range``: the pass's unknown scale, log-uniform in this range.
    - ``depth_distortion``: amplitude (max |.|) of a smooth multiplicative radial distortion, a random cubic
      polynomial field over the image, drawn per pointmap (amplitude uniform in [0.5, 1] x this).
    - ``focal_error``: std of the pass's relative error of the implied focal (x, y scaled by ``1 + e``).
    - ``point_noise``: std of additive Gaussian noise per coordinate, relative to the distance to the camera.
    - ``hidden_noise``: noise multiplier for the pixels of the other image that the reference camera cannot see
      (MASt3R guesses those).
    - ``noise_scale``: multiplies the four corruption knobs above and ``match_px_noise`` (0 = exact).
    - confidences: ``1 + conf_max * exp(-err / conf_sigma)``, err = relative 3D error actually injected.

    Matches (both directions, like the reference's reciprocal matching on the ``subsample`` grid):

    - seeds at pixels ``(s/2 + s a, s/2 + s b)`` of one image, kept when the true point is visible in the other
      image (inside it, in front, depth within ``occlusion_tol`` relative of the other view's depth), then kept
      with probability ``match_keep``; the other end is the true projection plus Gaussian noise of std
      ``match_px_noise`` px, rounded and clipped to the image.
    - inlier confidences log-normal around ``inlier_conf`` (sigma ``conf_spread``), clipped to [1, 30].
    - ``outlier_rate``: fraction of all matches that are outliers (a random pixel at the other end), log-normal
      confidences around ``outlier_conf``, clipped to [1, 30].
    - pairs with fewer than ``min_matches`` true matches are "non-overlapping": they get ``poor_matches`` random
      matches with confidences uniform in [1, ``poor_conf_max``] (<= 5, below the matching threshold).
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    depth_distortion: float = 0.025
    focal_error: float = 0.01
    point_noise: float = 0.005
    hidden_noise: float = 3.0
    noise_scale: float = 1.0
    conf_max: float = 20.0
    conf_sigma: float = 0.03
    subsample: int = 8
    occlusion_tol: float = 0.02
    match_keep: float = 0.85
    match_px_noise: float = 0.7
    inlier_conf: float = 9.0
    outlier_conf: float = 2.5
    conf_spread: float = 0.5
    outlier_rate: float = 0.1
    min_matches: int = 8
    poor_matches: tuple[int, int] = (3, 10)
    poor_conf_max: float = 4.5

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        lo, hi = self.scale_range
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise bad("scale_range", "need 0 < low <= high")
        for name in (
            "depth_distortion",
            "focal_error",
            "point_noise",
            "hidden_noise",
            "noise_scale",
            "conf_max",
            "match_px_noise",
            "conf_spread",
            "occlusion_tol",
        ):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise bad(name, "must be a finite number >= 0")
        for name in ("conf_sigma", "inlier_conf", "outlier_conf"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise bad(name, "must be a finite number > 0")
        if not 0 <= self.outlier_rate < 1:
            raise bad("outlier_rate", "must be in [0, 1)")
        if not 0 < self.match_keep <= 1:
            raise bad("match_keep", "must be in (0, 1]")
        if not isinstance(self.subsample, (int, np.integer)) or self.subsample < 1:
            raise bad("subsample", "must be an integer >= 1")
        if self.min_matches < 0:
            raise bad("min_matches", "must be >= 0")
        if not 0 <= self.poor_matches[0] <= self.poor_matches[1]:
            raise bad("poor_matches", "need 0 <= low <= high")
        if not 1 <= self.poor_conf_max <= 5:
            raise bad("poor_conf_max", "must be in [1, 5]")

    def replace(self, **overrides: Any) -> SimConfig:
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown simulator option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class _ViewCache:
    """Per-view truth reused by every pair: camera-frame points, depth, grid seeds, distortion basis."""

    pts: np.ndarray  # (3, H, W) float32 camera-frame points, channel first
    dist: np.ndarray  # (H, W) float32 distance to the camera centre
    depth: np.ndarray  # (H, W) float32
    basis: np.ndarray  # (9, H*W) float32 cubic monomials of normalised pixel coordinates
    seeds: np.ndarray  # (S,) int64 flat indices of the grid seeds


def _norm3(p: np.ndarray) -> np.ndarray:
    """Euclidean norm over the first axis of a (3, ...) array."""
    return np.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])


def _view_cache(scene: SyntheticScene, i: int, subsample: int) -> _ViewCache:
    pts = np.ascontiguousarray(scene.points_cam(i).transpose(2, 0, 1), dtype=np.float32)
    h, w = scene.depthmaps[i].shape
    half = max(h, w) / 2.0
    u = ((np.arange(w) - w / 2.0) / half).astype(np.float32)
    v = ((np.arange(h) - h / 2.0) / half).astype(np.float32)
    uu, vv = np.broadcast_to(u[None, :], (h, w)).ravel(), np.broadcast_to(v[:, None], (h, w)).ravel()
    basis = np.stack([uu, vv, uu * uu, uu * vv, vv * vv, uu**3, uu * uu * vv, uu * vv * vv, vv**3], axis=0)
    s = subsample
    gy, gx = np.meshgrid(np.arange(s // 2, h, s), np.arange(s // 2, w, s), indexing="ij")
    return _ViewCache(pts=pts, dist=_norm3(pts), depth=scene.depthmaps[i], basis=basis, seeds=(gy * w + gx).ravel())


def _transfer(
    src: _ViewCache, dst: _ViewCache, a2b: np.ndarray, k_dst: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Express the points of view a in camera b and project them.

    Returns:
        pts (3, Ha, Wa) float32 in frame b; u, v (Ha, Wa) float32 pixel coordinates in b; visible (Ha, Wa) bool
        (in front, inside b's image and not occluded in b's depth map).
    """
    rot = a2b[:3, :3].astype(np.float32)
    shift = a2b[:3, 3].astype(np.float32)
    p = src.pts
    pts = np.stack([rot[r, 0] * p[0] + rot[r, 1] * p[1] + rot[r, 2] * p[2] + shift[r] for r in range(3)])
    z = pts[2]
    hb, wb = dst.depth.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_z = np.float32(1.0) / z
        u = np.float32(k_dst[0, 0]) * pts[0] * inv_z + np.float32(k_dst[0, 2])
        v = np.float32(k_dst[1, 1]) * pts[1] * inv_z + np.float32(k_dst[1, 2])
    inside = (z > 1e-6) & (u > -0.5) & (u < wb - 0.5) & (v > -0.5) & (v < hb - 0.5)
    ui = np.rint(np.where(inside, u, 0)).astype(np.intp)
    vi = np.rint(np.where(inside, v, 0)).astype(np.intp)
    np.clip(ui, 0, wb - 1, out=ui)
    np.clip(vi, 0, hb - 1, out=vi)
    visible = inside & (np.abs(dst.depth[vi, ui] - z) <= tol * z)
    return pts, u, v, visible


class _NoiseBank:
    """A large block of i.i.d. standard normal float32 samples; each pointmap's noise is a window at a random
    offset with a random sign. Drawing fresh normals costs ~15 ns a sample and dominated the simulation; within
    one pointmap the window is still i.i.d. Gaussian, and two windows only share samples at one arbitrary flat
    shift, which nothing downstream can notice."""

    def __init__(self, seed: int, min_size: int) -> None:
        size = max(1 << 22, 4 * min_size)
        self.samples = np.random.default_rng([int(seed), 0x6E6F6973]).standard_normal(size, dtype=np.float32)

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        start = int(rng.integers(0, len(self.samples) - n + 1))
        out = self.samples[start : start + n].reshape(shape)
        return -out if rng.integers(2) else out.copy()


def _corrupt(
    truth: np.ndarray,
    dist: np.ndarray,
    basis: np.ndarray,
    rng: np.random.Generator,
    sim: SimConfig,
    scale: float,
    focal_err: float,
    noise_rel: np.ndarray | float,
    bank: _NoiseBank,
) -> tuple[np.ndarray, np.ndarray]:
    """One predicted pointmap and its confidence from the true (3, H, W) float32 points in the reference frame.

    ``dist`` (H, W) is the truth's distance to the reference camera; ``noise_rel`` the noise std relative to it.
    Returns the (H, W, 3) float32 scaled pointmap and its (H, W) float32 confidence >= 1.
    """
    h, w = truth.shape[1:]
    amp = sim.depth_distortion * sim.noise_scale
    factor = np.ones((h, w), np.float32)
    if amp > 0:
        field = rng.standard_normal(basis.shape[0]).astype(np.float32) @ basis
        peak = float(np.abs(field).max())
        if peak > 0:
            factor += (field * np.float32(amp * rng.uniform(0.5, 1.0) / peak)).reshape(h, w)
    fxy = factor * np.float32(1.0 + focal_err)
    pred = [truth[0] * fxy, truth[1] * fxy, truth[2] * factor]
    sigma = (np.asarray(noise_rel, np.float32) * np.float32(sim.noise_scale)) * dist
    if np.any(sigma > 0):
        noise = bank.draw(rng, (3, h, w))
        noise *= sigma
        for c in range(3):
            pred[c] += noise[c]
    diff = [pred[c] - truth[c] for c in range(3)]
    err = np.sqrt(diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2]) / dist
    conf = np.exp(err * np.float32(-1.0 / sim.conf_sigma))
    conf *= np.float32(sim.conf_max)
    conf += np.float32(1.0)
    out = np.stack(pred, axis=-1)
    out *= np.float32(scale)
    return out, conf


def _lognormal_conf(rng: np.random.Generator, centre: float, spread: float, n: int) -> np.ndarray:
    return np.clip(centre * np.exp(spread * rng.standard_normal(n)), 1.0, 30.0)


def _simulate_pair(
    scene: SyntheticScene, cache: dict[int, _ViewCache], i: int, j: int, sim: SimConfig, seed: int, bank: _NoiseBank
) -> PairPrediction:
    rng = np.random.default_rng([int(seed), i, j])
    ci, cj = cache[i], cache[j]
    w2c = np.linalg.inv(scene.cam2w[[i, j]])
    i2j = w2c[1] @ scene.cam2w[i]
    j2i = w2c[0] @ scene.cam2w[j]
    pts_i_in_j, u_ij, v_ij, vis_ij = _transfer(ci, cj, i2j, scene.intrinsics[j], sim.occlusion_tol)
    pts_j_in_i, u_ji, v_ji, vis_ji = _transfer(cj, ci, j2i, scene.intrinsics[i], sim.occlusion_tol)

    log_lo, log_hi = np.log(sim.scale_range)
    scales = np.exp(rng.uniform(log_lo, log_hi, 2))
    ferr = rng.standard_normal(2) * sim.focal_error * sim.noise_scale
    hidden_ji = np.where(vis_ji, 1.0, sim.hidden_noise).astype(np.float32) * sim.point_noise
    hidden_ij = np.where(vis_ij, 1.0, sim.hidden_noise).astype(np.float32) * sim.point_noise
    dist_ji = _norm3(pts_j_in_i)
    dist_ij = _norm3(pts_i_in_j)
    pts11, conf11 = _corrupt(ci.pts, ci.dist, ci.basis, rng, sim, scales[0], ferr[0], sim.point_noise, bank)
    pts21, conf21 = _corrupt(pts_j_in_i, dist_ji, cj.basis, rng, sim, scales[0], ferr[0], hidden_ji, bank)
    pts22, conf22 = _corrupt(cj.pts, cj.dist, cj.basis, rng, sim, scales[1], ferr[1], sim.point_noise, bank)
    pts12, conf12 = _corrupt(pts_i_in_j, dist_ij, ci.basis, rng, sim, scales[1], ferr[1], hidden_ij, bank)

    (hi_, wi), (hj, wj) = ci.depth.shape, cj.depth.shape
    px_noise = sim.match_px_noise * sim.noise_scale

    def seeded(
        seeds: np.ndarray, vis: np.ndarray, u: np.ndarray, v: np.ndarray, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Grid seeds of one image that are visible in the other, and their noisy rounded partners."""
        s = seeds[vis.ravel()[seeds]]
        s = s[rng.uniform(size=len(s)) < sim.match_keep]
        src = np.stack([s % vis.shape[1], s // vis.shape[1]], axis=1)
        tx = u.ravel()[s] + px_noise * rng.standard_normal(len(s))
        ty = v.ravel()[s] + px_noise * rng.standard_normal(len(s))
        dst = np.stack([np.clip(np.rint(tx), 0, w - 1), np.clip(np.rint(ty), 0, h - 1)], axis=1)
        return src.astype(np.int64), dst.astype(np.int64)

    a1, a2 = seeded(ci.seeds, vis_ij, u_ij, v_ij, hj, wj)  # seeds in i -> pixels in j
    b2, b1 = seeded(cj.seeds, vis_ji, u_ji, v_ji, hi_, wi)  # seeds in j -> pixels in i
    xy1, xy2 = np.concatenate([a1, b1]), np.concatenate([a2, b2])
    n_in = len(xy1)
    if n_in < max(sim.min_matches, 1):
        n_poor = int(rng.integers(sim.poor_matches[0], sim.poor_matches[1] + 1))
        xy1 = np.stack([rng.integers(0, wi, n_poor), rng.integers(0, hi_, n_poor)], axis=1)
        xy2 = np.stack([rng.integers(0, wj, n_poor), rng.integers(0, hj, n_poor)], axis=1)
        conf = rng.uniform(1.0, sim.poor_conf_max, n_poor)
    else:
        conf = _lognormal_conf(rng, sim.inlier_conf, sim.conf_spread, n_in)
        n_out = int(round(n_in * sim.outlier_rate / (1.0 - sim.outlier_rate)))
        if n_out:
            n_a = n_out // 2  # half seeded in i (random pixel in j), half seeded in j
            o1a = np.stack(np.divmod(rng.choice(ci.seeds, n_a), wi)[::-1], axis=1)
            o2a = np.stack([rng.integers(0, wj, n_a), rng.integers(0, hj, n_a)], axis=1)
            o2b = np.stack(np.divmod(rng.choice(cj.seeds, n_out - n_a), wj)[::-1], axis=1)
            o1b = np.stack([rng.integers(0, wi, n_out - n_a), rng.integers(0, hi_, n_out - n_a)], axis=1)
            xy1 = np.concatenate([xy1, o1a, o1b])
            xy2 = np.concatenate([xy2, o2a, o2b])
            conf = np.concatenate([conf, _lognormal_conf(rng, sim.outlier_conf, sim.conf_spread, n_out)])
    # reference order: sorted by (flat index in i, flat index in j), duplicates dropped keeping the first
    key1 = xy1[:, 1] * wi + xy1[:, 0]
    key2 = xy2[:, 1] * wj + xy2[:, 0]
    _, first = np.unique(key1 * (hj * wj) + key2, return_index=True)
    first = np.sort(first)
    order = first[np.lexsort((key2[first], key1[first]))]
    xy1, xy2 = xy1[order].astype(np.int64), xy2[order].astype(np.int64)
    conf = conf[order].astype(np.float32)
    mean_conf = [float(c.mean()) for c in (conf11, conf21, conf22, conf12)]
    score = (float(np.prod(mean_conf) ** 0.25), float(conf.sum()), int(len(conf)))
    return PairPrediction(
        i=i,
        j=j,
        pts11=pts11,
        conf11=conf11,
        pts21=pts21,
        conf21=conf21,
        pts22=pts22,
        conf22=conf22,
        pts12=pts12,
        conf12=conf12,
        xy1=xy1,
        xy2=xy2,
        match_conf=conf,
        score=score,
    )


def simulate_predictions(
    scene: SyntheticScene, pairs: np.ndarray | Sequence[Sequence[int]], sim: SimConfig | None = None, seed: int = 0
) -> list[PairPrediction]:
    """MASt3R-like predictions for the given image pairs of a ground-truth scene.

    Args:
        scene: from :func:`make_scene` / :func:`render_scene`.
        pairs: (P, 2) image indices; each unordered pair is simulated once, in the orientation of its first
            occurrence (so a symmetrised scene-graph list gives one prediction per edge).
        sim: corruption model (default :class:`SimConfig()`).
        seed: each pair draws from its own generator seeded by ``(seed, i, j)``, so a pair's prediction does not
            depend on the other pairs requested.
    Returns:
        one :class:`PairPrediction` per unordered pair: ``pts11`` / ``pts21`` (images i / j in i's frame) share
        the pass scale s_ij, ``pts22`` / ``pts12`` (frame j) share s_ji; without noise ``pts21 = s_ij *
        (points of j in camera i)`` exactly (float32).
    """
    sim = sim if sim is not None else SimConfig()
    arr = np.asarray(pairs)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"pairs: expected an integer (P, 2) array, got shape {arr.shape} dtype {arr.dtype}")
    n = scene.n_views
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(f"pairs: image index out of range 0..{n - 1}")
    seen: set[tuple[int, int]] = set()
    todo: list[tuple[int, int]] = []
    for a, b in arr.tolist():
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            todo.append((a, b))
    cache = {v: _view_cache(scene, v, sim.subsample) for v in sorted({v for p in todo for v in p})}
    log.debug("simulating %d pairs over %d views", len(todo), len(cache))
    bank = _NoiseBank(seed, 3 * max(h * w for h, w in scene.shapes))
    return [_simulate_pair(scene, cache, a, b, sim, seed, bank) for a, b in todo]


class LazyPredictions(Sequence[PairPrediction]):
    """The predictions of :func:`simulate_predictions`, computed on access instead of all held in memory.

    Identical values (each pair has its own generator); used to benchmark alignment that streams its input,
    as it would from an on-disk cache. Per-view helper data is computed once and kept (small next to the
    pointmaps).
    """

    def __init__(
        self,
        scene: SyntheticScene,
        pairs: np.ndarray | Sequence[Sequence[int]],
        sim: SimConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.scene, self.sim, self.seed = scene, (sim if sim is not None else SimConfig()), seed
        seen: set[tuple[int, int]] = set()
        self.pairs: list[tuple[int, int]] = []
        for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
            if not (0 <= a < scene.n_views and 0 <= b < scene.n_views):
                raise InputError(f"pairs: image index out of range 0..{scene.n_views - 1}")
            key = (min(a, b), max(a, b))
            if key not in seen:
                seen.add(key)
                self.pairs.append((a, b))
        self._views: dict[int, Any] = {}
        self._bank = _NoiseBank(seed, 3 * max(h * w for h, w in scene.shapes))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> PairPrediction:  # type: ignore[override]
        a, b = self.pairs[k]
        for v in (a, b):
            if v not in self._views:
                self._views[v] = _view_cache(self.scene, v, self.sim.subsample)
        return _simulate_pair(self.scene, self._views, a, b, self.sim, self.seed, self._bank)
