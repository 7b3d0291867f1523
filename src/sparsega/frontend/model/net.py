"""The asymmetric two-view network (CroCo backbone + two heads): MASt3R and DUSt3R families.

``MASt3RNet`` holds a ViT encoder shared by both views, two decoders (``dec_blocks`` for the first view of a
decoding direction, ``dec_blocks2`` for the second) and two heads (``downstream_head1`` / ``downstream_head2``).
Parameter names match the official state dicts exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import InputError
from .decoder import DecoderBlock
from .encoder import Block, LayerNorm, PatchEmbed
from .heads import CatMLPDPTHead, DPTHead, HeadModes, LinearHead
from .rope import RoPE2D

Result = dict[str, torch.Tensor]
MASTER_CLASS = "AsymmetricMASt3R"
DUST3R_CLASS = "AsymmetricCroCo3DStereo"
INF = math.inf


@dataclass(frozen=True)
class NetConfig:
    """Validated architecture of a network (what the checkpoint constructor string describes)."""

    model_class: str = DUST3R_CLASS
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    enc_embed_dim: int = 768
    enc_depth: int = 12
    enc_num_heads: int = 12
    dec_embed_dim: int = 512
    dec_depth: int = 8
    dec_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_im2_in_dec: bool = True
    rope_base: float = 100.0
    head_type: str = "linear"
    output_mode: str = "pts3d"
    depth_mode: tuple[str, float, float] = ("exp", -INF, INF)
    conf_mode: tuple[str, float, float] | None = ("exp", 1.0, INF)
    desc_mode: str = "norm"
    two_confs: bool = False
    desc_conf_mode: tuple[str, float, float] | None = None

    @property
    def desc_dim(self) -> int | None:
        """Descriptor width from ``output_mode='pts3d+descN'``, None for plain ``pts3d``."""
        if self.output_mode.startswith("pts3d+desc"):
            return int(self.output_mode[len("pts3d+desc") :])
        return None

    def head_modes(self) -> HeadModes:
        return HeadModes(
            depth_mode=self.depth_mode,
            conf_mode=self.conf_mode,
            desc_dim=self.desc_dim,
            desc_mode=self.desc_mode,
            two_confs=self.two_confs,
            desc_conf_mode=self.desc_conf_mode if self.desc_conf_mode is not None else self.conf_mode,
        )


def _image_size(shape: Any, what: str) -> tuple[int, int]:
    """(H, W) from a tuple, a (2,) tensor/array or a (B, 2) true_shape whose rows must all be equal."""
    t = torch.as_tensor(shape).reshape(-1, 2) if not isinstance(shape, torch.Tensor) else shape.reshape(-1, 2)
    if t.shape[0] == 0:
        raise InputError(f"{what}: empty true_shape")
    if not bool((t == t[:1]).all()):
        raise InputError(f"{what}: all true_shapes of a batch must be equal, got {t.tolist()}")
    h, w = (int(v) for v in t[0].tolist())
    return h, w


class MASt3RNet(nn.Module):
    """Asymmetric CroCo stereo network with MASt3R (descriptor) or DUSt3R heads; inference only."""

    def __init__(self, config: NetConfig, arch: dict[str, Any] | None = None) -> None:
        super().__init__()
        c = config
        self.config = c
        self.arch: dict[str, Any] = dict(arch) if arch is not None else {}
        self._identity: str | None = None
        # Order of registration = order of the official state dict.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dec_embed_dim))  # unused at inference
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.enc_embed_dim)
        self.rope = RoPE2D(base=c.rope_base)
        self.enc_blocks = nn.ModuleList(
            [Block(c.enc_embed_dim, c.enc_num_heads, c.mlp_ratio, self.rope) for _ in range(c.enc_depth)]
        )
        self.enc_norm = LayerNorm(c.enc_embed_dim)
        self.decoder_embed = nn.Linear(c.enc_embed_dim, c.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [
                DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, self.rope, c.norm_im2_in_dec)
                for _ in range(c.dec_depth)
            ]
        )
        self.dec_norm = LayerNorm(c.dec_embed_dim)
        self.dec_blocks2 = nn.ModuleList(
            [
                DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, self.rope, c.norm_im2_in_dec)
                for _ in range(c.dec_depth)
            ]
        )
        self.downstream_head1 = self._make_head()
        self.downstream_head2 = self._make_head()
        self.eval()

    def _make_head(self) -> nn.Module:
        c = self.config
        modes = c.head_modes()
        if c.head_type == "catmlp+dpt":
            return CatMLPDPTHead(c.enc_embed_dim, c.dec_embed_dim, c.dec_depth, c.patch_size, modes)
        if c.head_type == "dpt":
            return DPTHead(c.enc_embed_dim, c.dec_embed_dim, c.dec_depth, c.patch_size, modes)
        if c.head_type == "linear":
            return LinearHead(c.dec_embed_dim, c.patch_size, modes)
        raise ValueError(f"unknown head type {c.head_type!r}")

    # ------------------------------------------------------------------------------------------ properties

    @property
    def has_descriptors(self) -> bool:
        """True for MASt3R heads producing ``desc`` and ``desc_conf``."""
        return self.config.desc_dim is not None

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        """Training resolution (H, W) of the checkpoint, e.g. (512, 512)."""
        return self.config.img_size

    @property
    def identity(self) -> str:
        """Short hex digest of architecture + weights; stable key for caches of this network's outputs."""
        if self._identity is None:
            h = hashlib.blake2b(digest_size=8)
            h.update((self.config.model_class + repr(sorted(self.arch.items()) or self.config)).encode())
            for name, tensor in self.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._identity = h.hexdigest()
        return self._identity

    @property
    def device(self) -> torch.device:
        return self.patch_embed.proj.weight.device

    # ------------------------------------------------------------------------------------------ stages

    def _check_images(self, img: torch.Tensor, what: str) -> None:
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise InputError(f"{what}: expected a (B, 3, H, W) tensor, got {shape}")
        p = self.patch_size
        if img.shape[-2] % p or img.shape[-1] % p or img.shape[-2] == 0 or img.shape[-1] == 0:
            raise InputError(f"{what}: image size {tuple(img.shape[-2:])} is not a positive multiple of {p}")

    @torch.inference_mode()
    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images (B, 3, H, W) in [-1, 1] -> tokens (B, N, D_enc) after ``enc_norm``, pos (B, N, 2) int64."""
        self._check_images(img, "encode")
        x, pos = self.patch_embed(img.to(self.patch_embed.proj.weight.dtype))
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    @torch.inference_mode()
    def decode_tokens(
        self, feat1: torch.Tensor, pos1: torch.Tensor, feat2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both decoders -> two lists of ``dec_depth + 1`` token tensors (B, N_i, D).

        Entry 0 is the encoder output (not the ``decoder_embed`` output), entry i the output of layer i, the last
        one after ``dec_norm``. Layer i of each side reads the outputs of layer i-1 of both sides.
        """
        out1, out2 = [feat1], [feat2]
        x1, x2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = blk1(x1, x2, pos1, pos2), blk2(x2, x1, pos2, pos1)
            out1.append(x1)
            out2.append(x2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2

    def _run_head(self, head: nn.Module, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> Result:
        """Head in its own dtype (float32) with autocast off, whatever the backbone ran under."""
        dtype = next(head.parameters()).dtype
        with torch.autocast(device_type=tokens[0].device.type, enabled=False):
            return head([t.to(dtype) for t in tokens], image_size)

    @torch.inference_mode()
    def decode_pair(
        self,
        feat1: torch.Tensor,
        pos1: torch.Tensor,
        feat2: torch.Tensor,
        pos2: torch.Tensor,
        shape1: Any,
        shape2: Any,
    ) -> tuple[Result, Result]:
        """Decoder + heads for one direction: view 1 through head 1, view 2 (in view 1's frame) through head 2.

        ``shape*`` is (H, W) or a (B, 2) true_shape with equal rows. Returns two dicts of (B, H, W, ...) tensors.
        """
        size1, size2 = _image_size(shape1, "shape1"), _image_size(shape2, "shape2")
        for feat, size, what in ((feat1, size1, "feat1"), (feat2, size2, "feat2")):
            n = (size[0] // self.patch_size) * (size[1] // self.patch_size)
            if feat.ndim != 3 or feat.shape[1] != n:
                raise InputError(f"{what}: {tuple(feat.shape)} tokens do not match image size {size}")
        dec1, dec2 = self.decode_tokens(feat1, pos1, feat2, pos2)
        return self._run_head(self.downstream_head1, dec1, size1), self._run_head(self.downstream_head2, dec2, size2)

    @torch.inference_mode()
    def symmetric_inference(
        self,
        img1: torch.Tensor,
        img2: torch.Tensor,
        true_shape1: Any = None,
        true_shape2: Any = None,
    ) -> tuple[Result, Result, Result, Result]:
        """Both decoding directions of a pair -> ``(res11, res21, res22, res12)``.

        ``img*`` (B, 3, H, W) in [-1, 1]. resAB = prediction for image A in the frame of the first image of that
        direction: (img1, img2) gives res11 (head 1) and res21 (head 2); (img2, img1) gives res22 and res12.
        Each dict holds ``pts3d`` (B,H,W,3), ``conf`` (B,H,W) and, for MASt3R, ``desc`` (B,H,W,D), ``desc_conf``.
        Portraits are never transposed; ``true_shape*`` if given must equal the image (H, W).
        """
        self._check_images(img1, "img1")
        self._check_images(img2, "img2")
        if img1.shape[0] != img2.shape[0]:
            raise InputError(f"img1 and img2 batch sizes differ: {img1.shape[0]} vs {img2.shape[0]}")
        size1, size2 = tuple(img1.shape[-2:]), tuple(img2.shape[-2:])
        for ts, size, what in ((true_shape1, size1, "true_shape1"), (true_shape2, size2, "true_shape2")):
            if ts is not None and _image_size(ts, what) != size:
                raise InputError(f"{what} {_image_size(ts, what)} differs from the image size {size}")
        b = img1.shape[0]
        if size1 == size2:
            feat, pos = self.encode(torch.cat([img1, img2]))
            feat1, feat2, pos1, pos2 = feat[:b], feat[b:], pos[:b], pos[b:]
            # Both directions in one batch: decoder 1 sees [view1; view2], decoder 2 sees [view2; view1].
            first, second = self.decode_pair(
                torch.cat([feat1, feat2]), torch.cat([pos1, pos2]), torch.cat([feat2, feat1]),
                torch.cat([pos2, pos1]), size1, size2,
            )  # fmt: skip
            res11 = {k: v[:b] for k, v in first.items()}
            res22 = {k: v[b:] for k, v in first.items()}
            res21 = {k: v[:b] for k, v in second.items()}
            res12 = {k: v[b:] for k, v in second.items()}
            return res11, res21, res22, res12
        feat1, pos1 = self.encode(img1)
        feat2, pos2 = self.encode(img2)
        res11, res21 = self.decode_pair(feat1, pos1, feat2, pos2, size1, size2)
        res22, res12 = self.decode_pair(feat2, pos2, feat1, pos1, size2, size1)
        return res11, res21, res22, res12

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[Result, Result]:
        """One decoding direction from images: ``(res1, res2)`` as the reference ``forward``."""
        feat1, pos1 = self.encode(img1)
        feat2, pos2 = self.encode(img2)
        return self.decode_pair(feat1, pos1, feat2, pos2, tuple(img1.shape[-2:]), tuple(img2.shape[-2:]))
