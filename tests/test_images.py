"""Tests of sparsega.frontend.images: reference preprocessing bit-for-bit, modes, EXIF, coordinate maps, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sparsega.errors import InputError
from sparsega.frontend.images import collect_image_paths, load_image, load_images

from conftest import load_golden


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_golden("blocks/load_images.npz")


def _save(path: Path, arr: np.ndarray, **kw: object) -> str:
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_golden_bit_for_bit(golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    n = len(golden["sizes_wh"])
    paths = [_save(tmp_path / f"img{k}.png", golden[f"img{k}_input_u8"]) for k in range(n)]
    images = load_images(paths, size=512)
    for k, im in enumerate(images):
        assert im.original_size == tuple(golden["sizes_wh"][k])
        np.testing.assert_array_equal(im.rgb, golden[f"img{k}_out_u8"])
        assert im.true_shape == tuple(golden[f"img{k}_true_shape"][0])
        assert im.resized_size == tuple(golden[f"img{k}_resized_wh"])
        assert im.crop_box == tuple(golden[f"img{k}_crop_box_ltrb"].astype(int))
        assert im.resample == str(golden[f"img{k}_resample"])
        t = im.tensor()
        assert t.dtype == torch.float32 and tuple(t.shape) == tuple(golden[f"img{k}_tensor_shape"])
        assert im.true_shape[0] % 16 == 0 and im.true_shape[1] % 16 == 0
    small = int(golden["img_small_index"])
    ref = golden["img_small_tensor_rows0to31"]
    np.testing.assert_array_equal(images[small].tensor()[:, :, :32].numpy(), ref)


def test_size_224_centre_square(tmp_path: Path) -> None:
    im = load_image(_save(tmp_path / "a.png", _noise(750, 1000)), size=224)
    # long side round(224 * 4/3) = 299, short side 224, centred 224 square around (149, 112)
    assert im.resized_size == (299, 224)
    assert im.crop_box == (37, 0, 261, 224)
    assert im.true_shape == (224, 224)
    portrait = load_image(_save(tmp_path / "b.png", _noise(517, 333)), size=224)
    assert portrait.true_shape == (224, 224)
    assert portrait.resample == "LANCZOS"


def test_exif_orientation(tmp_path: Path) -> None:
    raw = _noise(40, 64, seed=1)
    raw[:10, :20] = 255  # make it clearly non-symmetric
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = _save(tmp_path / "rot.jpg", raw, quality=95, exif=exif)
    im = load_image(path, size=512)
    stored = np.asarray(Image.open(path).convert("RGB"))  # decoded pixels, not oriented
    assert stored.shape == (40, 64, 3)
    assert im.original_size == (40, 64)  # (W0, H0) after orientation: portrait
    ref = load_image(_save(tmp_path / "upright.png", np.ascontiguousarray(np.rot90(stored, k=-1))), size=512)
    np.testing.assert_array_equal(im.rgb, ref.rgb)
    assert im.true_shape[0] > im.true_shape[1]


def test_modes_16bit_gray_rgba_palette(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    # 512x384 needs no resize and no crop: the conversion alone is visible
    v16 = rng.integers(0, 65536, (384, 512), dtype=np.uint16)
    im16 = load_image(_save(tmp_path / "g16.png", v16))
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    expect = np.clip(np.rint(v16 / 257.0), 0, 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(im16.rgb[..., c], expect)
    assert im16.rgb.max() > 250  # scaled, not clipped to 255 everywhere

    gray = rng.integers(0, 256, (384, 512), dtype=np.uint8)
    img = load_image(_save(tmp_path / "g8.png", gray))
    np.testing.assert_array_equal(img.rgb, np.repeat(gray[..., None], 3, axis=2))

    rgba = rng.integers(0, 256, (384, 512, 4), dtype=np.uint8)
    ima = load_image(_save(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(ima.rgb, rgba[..., :3])  # alpha dropped, as the reference

    la = np.stack([gray, 255 - gray], axis=-1)
    iml = load_image(_save(tmp_path / "la.png", la))
    np.testing.assert_array_equal(iml.rgb[..., 1], gray)

    pal = Image.fromarray(rgba[..., :3]).quantize(16)
    pal.save(tmp_path / "p.png")
    imp = load_image(str(tmp_path / "p.png"))
    np.testing.assert_array_equal(imp.rgb, np.asarray(pal.convert("RGB")))

    cmyk = Image.fromarray(rgba, mode="RGBA").convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    imc = load_image(str(tmp_path / "c.jpg"))
    assert imc.rgb.dtype == np.uint8 and imc.rgb.shape == (384, 512, 3)
    assert not imc.rgb.flags.writeable


def test_to_original_finds_a_marker(tmp_path: Path) -> None:
    """A blob drawn at a sub-pixel position is found back there through the resize + crop."""
    h0, w0 = 700, 700  # square: resized 512x512 then cropped 64 rows top and bottom
    x0, y0 = 371.3, 402.6
    yy, xx = np.mgrid[:h0, :w0]
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 8.0**2))
    arr = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    im = load_image(_save(tmp_path / "blob.png", arr))
    assert im.crop_box == (0, 64, 512, 448)
    w = im.rgb[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
    np.testing.assert_allclose(im.to_original(centroid), [x0, y0], atol=0.3)
    np.testing.assert_allclose(im.from_original([x0, y0]), centroid, atol=0.3 * im.scale)


def test_coordinate_maps_round_trip(golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    im = load_image(_save(tmp_path / "a.png", golden["img3_input_u8"]))  # 333x517 -> crop offset 5
    xy = np.random.default_rng(3).uniform(-5, 600, (50, 2))
    np.testing.assert_allclose(im.from_original(im.to_original(xy)), xy, atol=1e-9)
    # pixel edges map to pixel edges: the crop's left edge (-0.5) is original x = left_edge_resized * W0 / W1
    left_edge = im.to_original(np.array([-0.5, -0.5]))
    np.testing.assert_allclose(left_edge + 0.5, [im.crop_box[0] * 333 / im.resized_size[0], 0.0], atol=1e-9)
    right = im.to_original(np.array([im.true_shape[1] - 0.5, im.true_shape[0] - 0.5])) + 0.5
    np.testing.assert_allclose(right, [im.crop_box[2] * 333 / im.resized_size[0], 517.0], atol=1e-9)


def test_intrinsics_maps(tmp_path: Path) -> None:
    im = load_image(_save(tmp_path / "a.png", _noise(517, 333, seed=4)))
    K = np.array([[400.0, 0.5, 160.0], [0.0, 410.0, 250.0], [0.0, 0.0, 1.0]])
    K0 = im.intrinsics_to_original(K)
    np.testing.assert_allclose(im.intrinsics_from_original(K0), K, atol=1e-9)
    pts = np.random.default_rng(5).uniform([-1, -1, 2], [1, 1, 5], (20, 3))
    proj = pts @ K.T
    proj0 = pts @ K0.T
    np.testing.assert_allclose(im.to_original(proj[:, :2] / proj[:, 2:]), proj0[:, :2] / proj0[:, 2:], atol=1e-9)
    with pytest.raises(InputError):
        im.intrinsics_to_original(np.eye(2))


def test_content_hash(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", _noise(64, 64))
    im = load_image(path)
    assert im.content_hash == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert im.path == path


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    good = Path(_save(tmp_path / "good.jpg", _noise(200, 300), quality=90)).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # someone else's global setting must not hide the damage
        with pytest.raises(InputError, match="trunc.jpg"):
            load_image(tmp_path / "trunc.jpg")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    with pytest.raises(InputError, match="tiny.png"):
        load_image(_save(tmp_path / "tiny.png", _noise(1, 1)))
    with pytest.raises(InputError, match="thin.png"):
        load_image(_save(tmp_path / "thin.png", _noise(20, 2000)))  # 512x5 after resize
    with pytest.raises(InputError, match="size"):
        load_image(tmp_path / "good.jpg", size=0)
    with pytest.raises(InputError):
        load_images([])


def test_collect_image_paths(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "c.jpeg"):
        _save(folder / name, _noise(20, 20), **({"format": "PNG"} if name.endswith("PNG") else {}))
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    listed = collect_image_paths([str(folder)])
    assert [Path(p).name for p in listed] == ["a.PNG", "b.jpg", "c.jpeg"]
    globbed = collect_image_paths([str(folder / "*")])
    assert [Path(p).name for p in globbed] == ["a.PNG", "b.jpg", "c.jpeg"]
    mixed = collect_image_paths([str(folder / "c.jpeg"), str(folder)])
    assert [Path(p).name for p in mixed] == ["c.jpeg", "a.PNG", "b.jpg"]  # duplicate dropped, order kept
    assert collect_image_paths([str(folder / "notes.txt")]) == [str(folder / "notes.txt")]  # explicit file kept

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty"):
        collect_image_paths([str(empty)])
    with pytest.raises(InputError, match="nope"):
        collect_image_paths([str(tmp_path / "nope.jpg")])
    with pytest.raises(InputError, match="zzz"):
        collect_image_paths([str(folder / "zzz*.jpg")])
    with pytest.raises(InputError):
        collect_image_paths([])
