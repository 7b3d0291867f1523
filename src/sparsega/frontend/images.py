"""Image loading: decode, orient (EXIF), convert to RGB, resize/crop to the network size, map back to the original.

The preprocessing reproduces the reference (DUSt3R ``load_images``) byte for byte for 8-bit images:

- size != 224 (512 by default): the long side is resized to ``size`` with Python's ``round`` (banker's rounding) on
  ``side * size / long_side``; Pillow LANCZOS when the long side was larger than ``size``, BICUBIC otherwise. The
  resized image is centre-cropped around ``(W // 2, H // 2)`` to the largest multiples of 16; a square image becomes
  4:3 landscape (512x512 -> 512x384) unless ``square_ok``.
- size == 224: the SHORT side is resized to about 224 (long side to ``round(224 * long / short)``), then a centred
  square of side ``2 * min(W // 2, H // 2)`` is cropped.

Deliberate differences (only where the reference would produce an unusable or wrong image):

- 16-bit images (``I;16*``, ``I``) are scaled to 8 bits (``round(v / 257)``) instead of being clipped at 255.
- A crop side that would not be a multiple of 16 (only possible for exotic ``size`` values, or a 224 crop whose
  short side rounds to an odd number) is floored to a multiple of 16.
- Images smaller than 16 pixels on a side (before or after resizing) are rejected instead of being blown up.

Alpha channels are dropped (like the reference), not composited.

Coordinate convention (used by :meth:`LoadedImage.to_original` and the intrinsics maps): continuous pixel
coordinates ``(x, y)`` where the integer point ``(c, r)`` is the CENTRE of the pixel in column ``c``, row ``r`` (the
OpenCV convention and the one of :class:`~sparsega.types.PairPrediction`). Pillow's resize aligns pixel areas, so
the network pixel ``x`` (after the crop offset ``left``) maps to ``x0 = (x + left + 0.5) * W0 / W1 - 0.5`` in the
original image, with ``W1`` the resized (pre-crop) width; the same holds for ``y``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import InputError

logger = logging.getLogger(__name__)

try:  # optional HEIC/HEIF support, as in the reference
    from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

    register_heif_opener()
    _HEIF = True
except ImportError:  # pragma: no cover - depends on the environment
    _HEIF = False

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") + (
    (".heic", ".heif") if _HEIF else ()
)
MIN_SIDE = 16
PATCH = 16


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One image prepared for the network, with the map back to the original pixels.

    Attributes:
        path: the path as given.
        rgb: (H, W, 3) uint8 network-sized image (read-only).
        original_size: (W0, H0) of the decoded image after EXIF orientation.
        resized_size: (W1, H1) after the resize, before the crop.
        crop_box: (left, top, right, bottom) of the crop, in resized pixels.
        scale: nominal resize factor (resized long side / original long side); the exact per-axis factors used by
            the coordinate maps are :attr:`scale_xy`.
        resample: "LANCZOS" or "BICUBIC", the Pillow filter used.
        content_hash: sha256 hex digest of the file bytes (cache key).
        size: the requested network size (512 or 224 for the official checkpoints).
    """

    path: str
    rgb: np.ndarray
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    scale: float
    resample: str
    content_hash: str
    size: int

    @property
    def true_shape(self) -> tuple[int, int]:
        """(H, W) of the network image."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Exact per-axis resize factors (W1 / W0, H1 / H0)."""
        return (self.resized_size[0] / self.original_size[0], self.resized_size[1] / self.original_size[1])

    def tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        """(1, 3, H, W) float32 network input in [-1, 1]: (u8 / 255 - 0.5) / 0.5, as the reference."""
        x = torch.from_numpy(np.array(self.rgb, copy=True)).to(device=device)
        x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div(255)
        return (x - 0.5) / 0.5

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each (2,) float64, such that xy0 = a * xy + b (network -> original, pixel-centre convention)."""
        a = np.array([self.original_size[0] / self.resized_size[0], self.original_size[1] / self.resized_size[1]])
        off = np.array([self.crop_box[0], self.crop_box[1]], dtype=np.float64)
        return a, (off + 0.5) * a - 0.5

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) network pixel coordinates (x, y) to original-image coordinates, float64."""
        a, b = self._affine()
        return np.asarray(xy, dtype=np.float64) * a + b

    def from_original(self, xy0: np.ndarray) -> np.ndarray:
        """Map (..., 2) original-image pixel coordinates (x, y) to network coordinates, float64."""
        a, b = self._affine()
        return (np.asarray(xy0, dtype=np.float64) - b) / a

    def _affine_matrix(self) -> np.ndarray:
        a, b = self._affine()
        return np.array([[a[0], 0.0, b[0]], [0.0, a[1], b[1]], [0.0, 0.0, 1.0]])

    def intrinsics_to_original(self, K: np.ndarray) -> np.ndarray:
        """(3, 3) intrinsics in network pixels -> (3, 3) float64 intrinsics in original pixels (K0 = A @ K)."""
        return self._affine_matrix() @ _check_K(K)

    def intrinsics_from_original(self, K0: np.ndarray) -> np.ndarray:
        """(3, 3) intrinsics in original pixels -> (3, 3) float64 intrinsics in network pixels (K = A^-1 @ K0)."""
        return np.linalg.solve(self._affine_matrix(), _check_K(K0))


def _check_K(K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise InputError(f"intrinsics must be a finite 3x3 matrix, got shape {K.shape}")
    return K


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Force Pillow to fail on truncated files, whatever another library set globally."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode(path: str, data: bytes) -> Image.Image:
    """Fully decode `data` (the bytes of `path`) and apply the EXIF orientation."""
    if not data:
        raise InputError(f"{path}: empty file (0 bytes)")
    with _strict_decoding():
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise InputError(f"{path}: not an image (Pillow cannot identify it)") from None
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: image too large ({exc})") from None
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            img.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: image too large ({exc})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"{path}: truncated or corrupt image ({exc})") from None
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit data is scaled (v / 257), alpha is dropped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        v = np.asarray(img).astype(np.float64)
        u8 = np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(u8, mode="L").convert("RGB")
    return img.convert("RGB")


def _resize_crop(
    img: Image.Image, size: int, square_ok: bool
) -> tuple[Image.Image, tuple[int, int], tuple[int, int, int, int], str]:
    """Resize + centre-crop as the reference; returns (image, resized (W1, H1), crop box, resample name)."""
    w0, h0 = img.size
    if size == 224:
        long_edge = round(size * max(w0 / h0, h0 / w0))
    else:
        long_edge = size
    s = max(w0, h0)
    resample = "LANCZOS" if s > long_edge else "BICUBIC"
    new_size = (int(round(w0 * long_edge / s)), int(round(h0 * long_edge / s)))
    if min(new_size) < 1:
        raise InputError(f"image of {w0}x{h0} pixels is too thin to resize")
    img = img.resize(new_size, getattr(Image.Resampling, resample))
    w1, h1 = new_size
    cx, cy = w1 // 2, h1 // 2
    if size == 224:
        half = min(cx, cy)
        half = (2 * half // PATCH) * (PATCH // 2)
        halfw = halfh = half
    else:
        halfw, halfh = ((2 * cx) // PATCH) * (PATCH // 2), ((2 * cy) // PATCH) * (PATCH // 2)
        if not square_ok and w1 == h1:
            halfh = ((3 * halfw // 4) // (PATCH // 2)) * (PATCH // 2)
    box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    return img.crop(box), (w1, h1), box, resample


def load_image(path: str | os.PathLike[str], size: int = 512, square_ok: bool = False) -> LoadedImage:
    """Load one image file for the network. Raises :class:`InputError` naming the file on any problem."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIDE:
        raise InputError(f"image size must be an integer >= {MIN_SIDE}, got {size!r}")
    name = str(path)
    p = Path(name)
    if not p.exists():
        raise InputError(f"{name}: no such file")
    if not p.is_file():
        raise InputError(f"{name}: not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    img = _decode(name, data)
    w0, h0 = img.size
    if min(w0, h0) < MIN_SIDE:
        raise InputError(f"{name}: image of {w0}x{h0} pixels is too small (minimum {MIN_SIDE} px per side)")
    img = _to_rgb(img)
    try:
        out, resized, box, resample = _resize_crop(img, int(size), square_ok)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    rgb = np.asarray(out, dtype=np.uint8).copy()
    if rgb.shape[0] < MIN_SIDE or rgb.shape[1] < MIN_SIDE:
        raise InputError(
            f"{name}: image of {w0}x{h0} pixels gives a {rgb.shape[1]}x{rgb.shape[0]} network image "
            f"(minimum {MIN_SIDE} px per side); its aspect ratio is too extreme"
        )
    rgb.flags.writeable = False
    logger.debug("loaded %s: %dx%d -> %dx%d (%s)", name, w0, h0, rgb.shape[1], rgb.shape[0], resample)
    return LoadedImage(
        path=name,
        rgb=rgb,
        original_size=(w0, h0),
        resized_size=resized,
        crop_box=box,
        scale=max(resized) / max(w0, h0),
        resample=resample,
        content_hash=hashlib.sha256(data).hexdigest(),
        size=int(size),
    )


def load_images(paths: Sequence[str | os.PathLike[str]], size: int = 512, square_ok: bool = False) -> list[LoadedImage]:
    """Load several images (see :func:`load_image`), in the given order."""
    if len(paths) == 0:
        raise InputError("no input images given")
    images = [load_image(p, size=size, square_ok=square_ok) for p in paths]
    logger.info("loaded %d images at size %d", len(images), size)
    return images


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def collect_image_paths(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand files, folders (sorted, image extensions only, not recursive) and glob patterns into image paths.

    Explicit files are kept whatever their extension (decoding checks them later). Duplicates are dropped, keeping
    the first occurrence; the order is otherwise the order of `inputs`. Raises :class:`InputError` for a missing
    path, a folder without images, a pattern matching no image, or an empty result.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[str] = []
    for item in inputs:
        name = str(item)
        if os.path.isdir(name):
            found = sorted(e for e in os.listdir(name) if _is_image_name(e) and os.path.isfile(os.path.join(name, e)))
            if not found:
                raise InputError(f"{name}: folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(os.path.join(name, e) for e in found)
        elif os.path.exists(name):
            out.append(name)
        elif glob.has_magic(name):
            found = sorted(m for m in glob.glob(name) if os.path.isfile(m) and _is_image_name(m))
            if not found:
                raise InputError(f"{name}: pattern matches no image")
            out.extend(found)
        else:
            raise InputError(f"{name}: no such file or folder")
    if not out:
        raise InputError("no input images given")
    seen: set[str] = set()
    unique: list[str] = []
    for p in out:
        key = os.path.normpath(os.path.abspath(p))
        if key in seen:
            logger.warning("%s given twice; using it once", p)
            continue
        seen.add(key)
        unique.append(p)
    return unique


__all__ = ["LoadedImage", "load_image", "load_images", "collect_image_paths", "photo_frames", "IMAGE_EXTENSIONS"]


def photo_frames(images: Sequence[LoadedImage]) -> tuple[np.ndarray, np.ndarray]:
    """The Scene fields that tie network pixels to the photos: ``net_to_orig (N, 3, 3)`` float64 and
    ``original_sizes (N, 2)`` int64 (W, H)."""
    net_to_orig = np.stack([im.intrinsics_to_original(np.eye(3)) for im in images])
    sizes = np.array([[int(im.original_size[0]), int(im.original_size[1])] for im in images], dtype=np.int64)
    return net_to_orig, sizes.reshape(-1, 2)
