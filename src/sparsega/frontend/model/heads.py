"""Prediction heads: DPT (dense pointmap + confidence), MASt3R cat-MLP local features, linear; activations.

Every head maps the decoder token list ``tokens[0..L]`` (entry 0 = encoder output, entry L = last decoder layer
after ``dec_norm``, each (B, N, D)) and the image size (H, W) to a dict of (B, H, W, ...) float tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Mlp

DPT_LAYER_DIMS = (96, 192, 384, 768)
DPT_FEATURE_DIM = 256
DPT_LAST_DIM = DPT_FEATURE_DIM // 2

Mode = tuple[str, float, float]


@dataclass(frozen=True)
class HeadModes:
    """Output activations: ``depth_mode``, ``conf_mode`` (None = no confidence), descriptor settings."""

    depth_mode: Mode
    conf_mode: Mode | None
    desc_dim: int | None = None
    desc_mode: str = "norm"
    two_confs: bool = False
    desc_conf_mode: Mode | None = None


# ---------------------------------------------------------------------------------------------- activations


def activate_pts3d(xyz: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Point activation on (..., 3): ``exp``: v/|v| * expm1(|v|); ``square``: v/|v| * |v|^2; ``linear``: v."""
    kind = mode[0]
    if kind == "linear":
        return xyz
    norm = xyz.norm(dim=-1, keepdim=True)
    unit = xyz / norm.clip(min=1e-8)
    if kind == "exp":
        return unit * torch.expm1(norm)
    if kind == "square":
        return unit * norm.square()
    raise ValueError(f"unknown depth mode {kind!r}")


def activate_conf(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Confidence activation: ``exp``: vmin + min(exp(x), vmax - vmin); ``sigmoid``: vmin + (vmax-vmin) sigmoid(x)."""
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown confidence mode {kind!r}")


def activate_desc(d: torch.Tensor, mode: str) -> torch.Tensor:
    """Descriptor activation on (..., D): ``norm`` = unit L2 norm (no epsilon, like the reference)."""
    if mode == "norm":
        return d / d.norm(dim=-1, keepdim=True)
    raise ValueError(f"unknown descriptor mode {mode!r}")


def postprocess(fmap: torch.Tensor, modes: HeadModes) -> dict[str, torch.Tensor]:
    """Raw head output (B, C, H, W) -> dict ``pts3d`` (B,H,W,3), ``conf`` (B,H,W), [``desc``, ``desc_conf``]."""
    f = fmap.permute(0, 2, 3, 1)
    res = {"pts3d": activate_pts3d(f[..., 0:3], modes.depth_mode)}
    start = 3
    if modes.conf_mode is not None:
        res["conf"] = activate_conf(f[..., 3], modes.conf_mode)
        start = 4
    if modes.desc_dim is not None:
        res["desc"] = activate_desc(f[..., start : start + modes.desc_dim], modes.desc_mode)
        if modes.two_confs:
            dmode = modes.desc_conf_mode if modes.desc_conf_mode is not None else modes.conf_mode
            if dmode is None:
                raise ValueError("two_confs needs a desc_conf_mode or a conf_mode")
            res["desc_conf"] = activate_conf(f[..., start + modes.desc_dim], dmode)
        elif "conf" in res:
            res["desc_conf"] = res["conf"].clone()
    return res


def tokens_to_grid(tokens: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """(B, N, C) row-major tokens -> (B, C, n_rows, n_cols)."""
    b, n, c = tokens.shape
    if n != n_rows * n_cols:
        raise ValueError(f"{n} tokens do not fill a {n_rows}x{n_cols} patch grid")
    return tokens.transpose(1, 2).reshape(b, c, n_rows, n_cols)


# ---------------------------------------------------------------------------------------------- DPT


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convs (bias on)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: ``out_conv(up2(rcu2(x + rcu1(skip))))``; ``resConfUnit1`` unused when there is no skip."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """DPT 'scratch': 3x3 no-bias projections to ``features`` (registered twice, as the state dict has them)."""

    def __init__(self, layer_dims: Sequence[int], features: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], features, 3, padding=1, bias=False)
        # Alias: the official state dict also lists these four as ``layer_rn.{0..3}`` (same tensors).
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)


class Interpolate(nn.Module):
    """Bilinear x``scale`` upsampling with ``align_corners=True`` (parameter-free slot of the DPT head)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)


class DPTAdapter(nn.Module):
    """DPT decoder over 4 hooked token layers -> (B, out_channels, H, W) raw map."""

    def __init__(
        self,
        out_channels: int,
        hooks: Sequence[int],
        dim_tokens: Sequence[int],
        patch_size: int,
        layer_dims: Sequence[int] = DPT_LAYER_DIMS,
        features: int = DPT_FEATURE_DIM,
        last_dim: int = DPT_LAST_DIM,
    ) -> None:
        super().__init__()
        self.hooks = tuple(int(h) for h in hooks)
        self.patch_size = patch_size
        self.scratch = Scratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            Interpolate(2.0),
            nn.Conv2d(features // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        ld = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(dim_tokens[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
                nn.Sequential(nn.Conv2d(dim_tokens[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
                nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], 1)),
                nn.Sequential(nn.Conv2d(dim_tokens[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
            ]
        )

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """``tokens`` list of (B, N, D_l); ``image_size`` (H, W) -> (B, out_channels, H, W)."""
        h, w = image_size
        n_rows, n_cols = h // self.patch_size, w // self.patch_size
        sc = self.scratch
        layers = [
            rn(post(tokens_to_grid(tokens[hook], n_rows, n_cols)))
            for hook, post, rn in zip(self.hooks, self.act_postprocess, sc.layer_rn)
        ]
        path = sc.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = sc.refinenet3(path, layers[2])
        path = sc.refinenet2(path, layers[1])
        path = sc.refinenet1(path, layers[0])
        return self.head(path)


def dpt_hooks(dec_depth: int) -> list[int]:
    """Token layers read by the DPT head: ``[0, L/2, 3L/4, L]`` (integer division)."""
    return [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]


# ---------------------------------------------------------------------------------------------- heads


class DPTHead(nn.Module):
    """DUSt3R ``dpt`` head: DPT -> (x, y, z[, c]) per pixel."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, patch_size: int, modes: HeadModes) -> None:
        super().__init__()
        self.modes = modes
        n_out = 3 + int(modes.conf_mode is not None)
        self.dpt = DPTAdapter(n_out, dpt_hooks(dec_depth), [enc_dim, dec_dim, dec_dim, dec_dim], patch_size)

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return postprocess(self.dpt(tokens, image_size), self.modes)


class CatMLPDPTHead(nn.Module):
    """MASt3R ``catmlp+dpt`` head: DPT pointmap + per-token MLP local features, pixel-shuffled to full size.

    The MLP reads ``concat[encoder output, last decoder output]`` (B, N, D_enc + D_dec) and produces
    ``(desc_dim + two_confs) * p^2`` channels per token; channel ``c*p^2 + dy*p + dx`` goes to pixel
    ``(p*row + dy, p*col + dx)`` of channel ``c``.
    """

    def __init__(
        self, enc_dim: int, dec_dim: int, dec_depth: int, patch_size: int, modes: HeadModes, hidden_factor: float = 4.0
    ) -> None:
        super().__init__()
        if modes.desc_dim is None:
            raise ValueError("catmlp+dpt head needs a descriptor dimension")
        self.modes = modes
        self.patch_size = patch_size
        n_out = 3 + int(modes.conf_mode is not None)
        self.dpt = DPTAdapter(n_out, dpt_hooks(dec_depth), [enc_dim, dec_dim, dec_dim, dec_dim], patch_size)
        idim = enc_dim + dec_dim
        n_local = (modes.desc_dim + int(modes.two_confs)) * patch_size**2
        self.head_local_features = Mlp(idim, int(hidden_factor * idim), n_local)

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        h, w = image_size
        p = self.patch_size
        pts = self.dpt(tokens, image_size)
        local = self.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))
        local = F.pixel_shuffle(tokens_to_grid(local, h // p, w // p), p)
        return postprocess(torch.cat([pts, local], dim=1), self.modes)


class LinearHead(nn.Module):
    """DUSt3R ``linear`` head: per-token Linear to ``(3 + conf) * p^2`` values, pixel-shuffled."""

    def __init__(self, dec_dim: int, patch_size: int, modes: HeadModes) -> None:
        super().__init__()
        self.modes = modes
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_dim, (3 + int(modes.conf_mode is not None)) * patch_size**2)

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        h, w = image_size
        p = self.patch_size
        feat = F.pixel_shuffle(tokens_to_grid(self.proj(tokens[-1]), h // p, w // p), p)
        return postprocess(feat, self.modes)
