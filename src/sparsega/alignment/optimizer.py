"""The two-stage sparse scene optimiser, vectorised over all images and all matches.

Parameterisation (faithful to MASt3R sparse GA):

- per image ``i``: a unit quaternion ``q_i`` and a translation ``t_i`` giving the pose RELATIVE TO ITS PARENT in the
  kinematic tree (root: relative to the world), a log scale ``s_i``, a log focal ``log f_i``, a principal point
  ``pp_i`` normalised by the image size, and anchor depths ``c_i`` (one per anchor, normalised by the image's
  median canonical depth ``m_i``, initialised to the canonical depths);
- camera ``i``'s distance to its "focal plane" is ``z_i = exp(s_i) m_i f_i / f0_i`` (``f0_i`` the initial focal),
  anchor depths are additive around it, ``d = g (z_i + (c - 1) m_i exp(s_i))`` with ``g = 1 / min_k exp(s_k)``
  (the reference's guard against the optimiser crushing the scale), and the chained pose's translation is moved
  back along the optical axis so that ``t`` places the focal-plane point rather than the camera centre;
- a pixel ``x`` tied to anchor ``a`` by the canonical ratio ``o`` has depth ``d_a (1 + (o - 1) f0 / f)``.

Stage 1 optimises poses and scales with a robust 3D loss between the two back-projected points of every match;
stage 2 adds focals, principal points and anchor depths with a robust 2D reprojection loss. Pairs whose best
match confidence is ``<= matching_conf_thr`` use instead a small-weight regression of each image's anchors onto
the other image's pointmap prediction ("DUSt3R fallback").

Every iteration is a handful of gathers over flat index arrays (images, anchors, matches) and a few reductions:
there is no Python loop over pairs or images, only over the depth levels of the kinematic tree.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..devices import resolve_device
from ..errors import ConfigError
from ..types import AlignConfig
from .kernels.common import KERNEL_GAMMAS, LOCK, kernel_threads
from .kernels.layout import CameraConsts, MatchLayout, build_layout, camera_table, kernel_match_loss
from .losses import TwinLosses, compose_chain, gather, tree_levels
from .problem import AlignProblem, OptimState, StageResult
from .stage_autograd import run_stage_autograd
from .stage_compiled import compiled_forward, run_stage_compiled

log = logging.getLogger(__name__)

Tensor = torch.Tensor


def resolve_backend(config: AlignConfig) -> str:
    """The match-loss implementation for ``config.loss_backend`` on ``config.device``: ``"auto"`` is the compiled
    kernel on CPU when the loss gammas have a compiled form, the autograd path otherwise (CUDA)."""
    want = config.loss_backend
    on_cpu = resolve_device(config.device) == "cpu"
    gammas_ok = all(float(g) in KERNEL_GAMMAS for g in (config.loss_gamma1, config.loss_gamma2))
    if want == "auto":
        return "kernel" if on_cpu and gammas_ok else "autograd"
    if want == "kernel":
        if not on_cpu:
            raise ConfigError(
                f"loss_backend='kernel' runs on CPU only, not on {config.device!r}; "
                "use loss_backend='auto' or 'autograd'"
            )
        if not gammas_ok:
            raise ConfigError(
                f"loss_backend='kernel' supports loss gammas {sorted(KERNEL_GAMMAS)} only; "
                "use loss_backend='autograd' for others"
            )
    return want


class SparseAligner:
    """Holds the parameters of a sparse scene alignment and runs the two stages.

    State is real here: the parameters and the optimiser; everything else is pure functions.
    """

    def __init__(self, problem: AlignProblem, config: AlignConfig) -> None:
        self.p = problem
        self.cfg = config
        dev, dt = problem.core_depth.device, problem.core_depth.dtype
        n = problem.n_images
        self.levels, self.parent_pos, self.inverse = tree_levels(n, problem.root, problem.edges)
        self._tree_key: tuple | None = None
        self._tree_t: tuple[list[Tensor], list[Tensor], Tensor] | None = None
        ok = problem.m_ok.cpu().numpy()
        self.n_ok = int(ok.sum())
        if not ok[: self.n_ok].all():
            raise ValueError("AlignProblem matches must be sorted with trusted (m_ok) matches first")
        self.backend = resolve_backend(config)
        self.threads = kernel_threads(config.threads, self.n_ok)  # of the compiled match kernel
        self._consts: tuple | None = None
        self._layout: MatchLayout | None = None
        self._np: dict[str, np.ndarray] | None = None  # float64 parameters of the compiled path

        self._imsizes = problem.imsizes.to(dt)
        diags = problem.imsizes.to(dt).norm(dim=1)
        self.min_focals, self.max_focals = 0.25 * diags, 10 * diags

        self.quats = torch.zeros((n, 4), device=dev, dtype=dt)
        self.quats[:, 3] = 1
        self.trans = torch.zeros((n, 3), device=dev, dtype=dt)
        self.log_sizes = torch.zeros(n, device=dev, dtype=dt)
        self.core_depth = problem.core_depth.clone()
        pps_norm = problem.pps / problem.imsizes.to(dt)
        if config.shared_intrinsics:
            w = problem.mean_confs.to(dt) if problem.mean_confs.numel() == n else torch.ones(n, device=dev, dtype=dt)
            w = w / w.sum()
            self.pps = (w @ pps_norm).view(1, 2).clone()
            self.log_focals = (w @ problem.base_focals).log().view(1).clone()
        else:
            self.pps = pps_norm.clone()
            self.log_focals = problem.base_focals.log().clone()

        # chained pairwise poses (pose_init="procrustes"); the reference starts from identity
        self.warm_start = config.pose_init != "identity" and problem.init_R is not None
        if self.warm_start:
            self.log_sizes.copy_(problem.init_log_sizes)
            self.set_absolute_poses(problem.init_R, problem.init_C * (1 / self.log_sizes.exp().min()))

        # known cameras (see sparsega.alignment.known): intrinsics gradient mask (1 = free), fixed poses, pose priors
        self.intr_grad_mask: Tensor | None = None
        self.fixed_mask: Tensor | None = None
        self.fixed_R: Tensor | None = None
        self.fixed_C: Tensor | None = None
        self.prior: tuple[Tensor, Tensor, Tensor, float, float] | None = None

    @functools.cached_property
    def twin(self) -> TwinLosses:
        """The autograd losses (CUDA, known poses, parity tests); built on first use, the compiled path never
        needs them."""
        return TwinLosses(self.p, self.n_ok)

    @torch.no_grad()
    def set_absolute_poses(self, R: Tensor, C: Tensor) -> None:
        """Initialise every camera at rotation ``R (N,3,3)`` and centre ``C (N,3)`` by inverting the kinematic
        chain: with the current sizes, focals and principal points, camera i's absolute chain pose is
        ``(R_i, T_i = C_i / g + R_i o_i)`` and its parameters are ``rel_i = chain(parent)^-1 chain(i)``."""
        p = self.p
        n = p.n_images
        focals, pps_n = self.focals(), self.pps.expand(n, 2)
        sizes = self.log_sizes.exp()
        g = 1 / sizes.min()
        off = self._focal_plane_offset(sizes * p.median_depths * focals / p.base_focals, focals, pps_n)
        chain = torch.eye(4, dtype=R.dtype, device=R.device).repeat(n, 1, 1)
        chain[:, :3, :3] = R
        chain[:, :3, 3] = C / g + (R @ off.unsqueeze(-1)).squeeze(-1)
        rel = chain.clone()
        nodes = np.concatenate(self.levels[1:]) if len(self.levels) > 1 else np.zeros(0, np.int64)
        if len(nodes):
            parents = np.concatenate([lvl[pp] for lvl, pp in zip(self.levels[:-1], self.parent_pos[1:])])
            idx = torch.as_tensor(nodes, device=R.device)
            rel[idx] = torch.linalg.inv(chain[torch.as_tensor(parents, device=R.device)]) @ chain[idx]
        # scipy's xyzw quaternions (roma's convention), from float64 rotations
        quats = Rotation.from_matrix(rel[:, :3, :3].detach().cpu().double().numpy()).as_quat()
        self.quats[:] = torch.from_numpy(quats).to(self.quats)
        self.trans[:] = rel[:, :3, 3]

    def _focal_plane_offset(self, z_cams: Tensor, focals: Tensor, pps_n: Tensor) -> Tensor:
        """(N, 3) vector from the camera centre to its focal-plane point, in camera axes."""
        ones = torch.ones_like(z_cams).unsqueeze(1)
        return z_cams.unsqueeze(1) * torch.cat(
            (self._imsizes.to(focals.dtype) / focals.unsqueeze(1) * (0.5 - pps_n), ones), dim=1
        )

    def focals(self) -> Tensor:
        f = self.log_focals.exp().expand(self.p.n_images)
        return torch.minimum(torch.maximum(f, self.min_focals), self.max_focals)

    def principal_points(self) -> Tensor:
        return self.pps.expand(self.p.n_images, 2) * self._imsizes.to(self.pps.dtype)

    def _tree_tensors(self) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The kinematic tree's index arrays as tensors on the device (cached; rebuilt if the tree changes)."""
        key = (id(self.levels), id(self.parent_pos), id(self.inverse))
        if self._tree_t is None or self._tree_key != key:
            dev = self.quats.device
            self._tree_t = (
                [torch.as_tensor(x, device=dev) for x in self.levels],
                [torch.as_tensor(x, device=dev) for x in self.parent_pos],
                torch.as_tensor(self.inverse, device=dev),
            )
            self._tree_key = key
        return self._tree_t

    def cameras(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns ``focals (N,), pps (N,2) pixels, cam2w (N,4,4), anchor_depth (A,), z_cams (N,)``."""
        p = self.p
        focals = self.focals()
        pps_n = self.pps.expand(p.n_images, 2)
        sizes = self.log_sizes.exp()
        gscale = 1 / sizes.min()
        z_cams = sizes * p.median_depths * focals / p.base_focals

        n = p.n_images
        import roma

        rot_rel = roma.unitquat_to_rotmat(self.quats / self.quats.norm(dim=1, keepdim=True).clamp_min(1e-12))
        trans_offset = self._focal_plane_offset(z_cams, focals, pps_n)
        trans_rel = self.trans
        if self.fixed_mask is not None:  # known cameras are roots whose chain pose derives from (R, C)
            m = self.fixed_mask.view(n, 1)
            fixed_t = self.fixed_C / gscale + (self.fixed_R @ trans_offset.unsqueeze(-1)).squeeze(-1)
            rot_rel = torch.where(m.view(n, 1, 1), self.fixed_R, rot_rel)
            trans_rel = torch.where(m, fixed_t, trans_rel)
        bottom = torch.zeros((1, 1, 4), device=focals.device, dtype=focals.dtype)
        bottom[..., 3] = 1
        rel = torch.cat((torch.cat((rot_rel, trans_rel.unsqueeze(-1)), 2), bottom.expand(n, 1, 4)), 1)
        chain = compose_chain(rel, *self._tree_tensors())
        rot = chain[:, :3, :3]
        new_t = gscale * (chain[:, :3, 3] - (rot @ trans_offset.unsqueeze(-1)).squeeze(-1))
        cam2w = torch.cat((torch.cat((rot, new_t.unsqueeze(-1)), 2), bottom.expand(n, 1, 4)), 1)

        # d = g (z_i + (c - 1) m_i s_i) = (g s_i m_i) (f_i / f0_i + c - 1): two per-image factors gathered per anchor
        fa = gather(gscale * sizes * p.median_depths, 0, p.anchor_img)
        fb = gather(focals / p.base_focals - 1, 0, p.anchor_img)
        anchor_depth = fa * (fb + self.core_depth)
        return focals, pps_n * self._imsizes.to(focals.dtype), cam2w, anchor_depth, z_cams

    def table_and_depths(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(17, N)`` camera table, ``(A,)`` anchor depths and ``cam2w (N, 4, 4)`` for the loss. With the compiled
        kernel and no known-pose constraint, the compiled camera model computes the first two (its backward is
        analytic) and cam2w is None (only the pose prior needs it)."""
        if self.backend == "kernel" and self.fixed_mask is None and self.prior is None:
            return (
                *camera_table(
                    self.quats,
                    self.trans,
                    self.log_sizes,
                    self.log_focals,
                    self.pps,
                    self.core_depth,
                    self._camera_consts(),
                ),
                None,
            )
        focals, pps, cam2w, anchor_depth, _ = self.cameras()
        return self.camera_table(focals, pps, cam2w), anchor_depth, cam2w

    def _camera_consts(self) -> CameraConsts:
        key = (id(self.levels), id(self.parent_pos))
        if self._consts is None or self._consts[0] != key:
            p = self.p
            consts = CameraConsts.build(
                p.median_depths, p.base_focals, self._imsizes, self.min_focals, self.max_focals, p.anchor_img,
                self.levels, self.parent_pos,
            )  # fmt: skip
            self._consts = (key, consts)
        return self._consts[1]

    # Hot path, in structure-of-arrays layout: per-image quantities are packed as the ROWS of one (17, N) table
    # [R (9, row-major), t (3), f, ppx, ppy, f0 / f, 1] gathered once per point with a single index_select along
    # columns, then unbound into 17 contiguous (L,) rows. Everything after is elementwise on contiguous rows (no
    # per-point 3x3 matmuls, no reductions over tiny axes, no zero-filled slice gradients).
    def camera_table(self, focals: Tensor, pps: Tensor, cam2w: Tensor) -> Tensor:
        """(17, N) packed camera parameters (see above)."""
        n = focals.shape[0]
        return torch.cat(
            (
                cam2w[:, :3, :3].reshape(n, 9).T,
                cam2w[:, :3, 3].T,
                focals[None],
                pps.T,
                (self.p.base_focals / focals)[None],
                torch.ones_like(focals)[None],
            ),
            dim=0,
        )

    @property
    def layout(self) -> MatchLayout:
        """Chunked layout of the trusted matches for the compiled kernel (built on first use)."""
        if self._layout is None:
            p, k = self.p, self.n_ok
            self._layout = build_layout(p.m_img[:, :k], p.m_xy[:, :k], p.m_anchor[:, :k], p.m_off[:, :k], p.m_conf[:k])
        return self._layout

    def _intr_grad(self) -> bool:
        return bool(self.log_focals.requires_grad or self.pps.requires_grad)

    def _match_loss(self, table: Tensor, anchor_depth: Tensor, stage: int, gamma: float) -> Tensor:
        return kernel_match_loss(table, anchor_depth, self.layout, stage, gamma, self._intr_grad(), self.threads)

    def loss_3d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Confidence-weighted robust (gamma) distance between the two 3D points of each trusted match."""
        if self.n_ok == 0:
            return table.new_zeros(())
        if self.backend != "autograd":
            return self._match_loss(table, anchor_depth, 1, gamma)
        return self.twin.loss_3d(table, anchor_depth, gamma)

    def loss_2d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Confidence-weighted robust (gamma) reprojection error of each side's point into the other image, both
        ways."""
        if self.n_ok == 0:
            return table.new_zeros(())
        if self.backend != "autograd":
            return self._match_loss(table, anchor_depth, 2, gamma)
        return self.twin.loss_2d(table, anchor_depth, gamma)

    def _params(self) -> dict[str, Tensor]:
        return {
            "quats": self.quats,
            "trans": self.trans,
            "log_sizes": self.log_sizes,
            "log_focals": self.log_focals,
            "pps": self.pps,
            "core_depth": self.core_depth,
        }

    def _compiled_ok(self) -> bool:
        """Whether the whole iteration can run in the compiled kernels (CPU, no known-pose constraint)."""
        return self.backend == "kernel" and self.fixed_mask is None and self.prior is None

    def run_stage(self, stage: int) -> StageResult:
        """Run stage 1 (3D matching; poses + scales) or 2 (2D reprojection; + intrinsics, depths)."""
        cfg = self.cfg
        if stage == 1:
            names, niter = ["quats", "trans", "log_sizes"], cfg.niter1
            lr_base = (cfg.lr1_procrustes or cfg.lr1) if self.warm_start else cfg.lr1
            gamma, name = cfg.loss_gamma1, "stage 1 (3D)"
        else:
            names = ["quats", "trans", "log_sizes", "log_focals"]
            if cfg.opt_pp:
                names.append("pps")
            if cfg.opt_depth:
                names.append("core_depth")
            niter, lr_base = cfg.niter2, cfg.lr2
            gamma, name = cfg.loss_gamma2, "stage 2 (2D)"
        if self.intr_grad_mask is not None and not bool(self.intr_grad_mask.any()):
            names = [k for k in names if k not in ("log_focals", "pps")]
        if self.fixed_mask is not None and bool(self.fixed_mask.all()):
            names = [k for k in names if k not in ("quats", "trans")]
        if self._compiled_ok():
            return run_stage_compiled(self, stage, names, niter, lr_base, gamma, name)
        return run_stage_autograd(self, stage, names, niter, lr_base, gamma, name)

    @torch.no_grad()
    def state(self, stages: list[StageResult]) -> OptimState:
        n = self.p.n_images
        if self._np is not None:  # the compiled path: its own float64 camera model on its float64 parameters
            table = np.empty((n, 17))
            ad = np.empty(self._np["core_depth"].shape[0])
            with LOCK:
                compiled_forward(self._np, self._camera_consts(), table, ad)
            c2w = np.tile(np.eye(4), (n, 1, 1))
            c2w[:, :3, :3] = table[:, :9].reshape(n, 3, 3)
            c2w[:, :3, 3] = table[:, 9:12]
            dev, dt = self.quats.device, self.quats.dtype
            focals = torch.from_numpy(table[:, 12].copy()).to(dev, dt)
            pps = torch.from_numpy(table[:, 13:15].copy()).to(dev, dt)
            cam2w = torch.from_numpy(c2w).to(dev, dt)
            anchor_depth = torch.from_numpy(ad).to(dev, dt)
        else:
            focals, pps, cam2w, anchor_depth, _ = self.cameras()
        K = torch.zeros((n, 3, 3), device=focals.device, dtype=focals.dtype)
        K[:, 0, 0] = K[:, 1, 1] = focals
        K[:, :2, 2] = pps
        K[:, 2, 2] = 1
        return OptimState(intrinsics=K, cam2w=cam2w, anchor_depth=anchor_depth, focals=focals, stages=stages)


def optimize(
    problem: AlignProblem, config: AlignConfig, setup: Callable[[SparseAligner], None] | None = None
) -> OptimState:
    """Run both stages on ``problem`` and return the final cameras and anchor depths.

    ``setup`` may adjust the aligner before optimising (known cameras: initial values and gradient masks).
    """
    state, first = _optimize_once(problem, config, setup)
    # skipping stage 1 only makes sense from a real start (from identity, stage 2 alone would start nowhere); a run
    # that stopped on a non-finite loss is returned as it is, so the failure stays visible in its stage records
    finished = not any(st.stopped_non_finite for st in state.stages)
    if config.stage1_check and config.niter1 and config.niter2 and first.warm_start and finished:
        # the same matches: the second run reuses the first one's layout
        direct, _ = _optimize_once(problem, dataclasses.replace(config, niter1=0), setup, first._layout)
        a, b = _final_loss(state), _final_loss(direct)
        keep_direct = b < a * (1.0 - config.stage1_check_margin)
        log.info(
            "stage1_check: final stage-2 loss %.6g with stage 1, %.6g without: keeping the run %s stage 1",
            a,
            b,
            "without" if keep_direct else "with",
        )
        if keep_direct:
            return direct
    return state


def _optimize_once(
    problem: AlignProblem,
    config: AlignConfig,
    setup: Callable[[SparseAligner], None] | None,
    layout: MatchLayout | None = None,
) -> tuple[OptimState, SparseAligner]:
    """One run of both stages, and its aligner; ``layout``: the problem's match layout if already built."""
    aligner = SparseAligner(problem, config)
    aligner._layout = layout
    if setup is not None:
        setup(aligner)
    stages = [aligner.run_stage(1)]
    if config.niter2 and not stages[0].stopped_non_finite:
        stages.append(aligner.run_stage(2))
    return aligner.state(stages), aligner


def _final_loss(state: OptimState) -> float:
    """Last stage-2 loss, +inf when stage 2 did not run or ended non-finite (so such a run never wins)."""
    last = state.stages[-1]
    if len(state.stages) < 2 or last.stopped_non_finite or not last.losses:
        return math.inf
    v = float(last.losses[-1])
    return v if math.isfinite(v) else math.inf
