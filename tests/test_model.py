"""Network tests: golden outputs of the tiny MASt3R / DUSt3R checkpoints, layout of the official ViT-L ones,
conventions the goldens cannot catch (LayerNorm eps, GELU), API shape/dtype/autocast behaviour."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from sparsega.errors import InputError
from sparsega.frontend.model import MASt3RNet, build_net, load_checkpoint
from sparsega.frontend.model.rope import RoPE2D

from conftest import GOLDEN, load_golden

MAST3R_CASES = ["land", "mixed", "diffshape"]
DUST3R_CASES = ["land", "mixed"]
VIEWS = ["11", "21", "22", "12"]


def assert_close_golden(ours: torch.Tensor | np.ndarray, ref: np.ndarray, name: str, positive: bool = False) -> None:
    """README rule: max|ours-ref| <= 1e-4 max|ref| per array; plus rtol 1e-4 for positive confidences."""
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{name}: dtype {got.dtype} != {ref.dtype}"
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    assert float(err.max()) <= 1e-4 * scale, f"{name}: max err {err.max():.3g} > 1e-4 * {scale:.3g}"
    if positive:
        assert float((err / np.abs(ref)).max()) <= 1e-4, f"{name}: relative error above 1e-4"


@pytest.fixture(scope="module")
def mast3r() -> MASt3RNet:
    return load_checkpoint(GOLDEN / "model_tiny_a.pth")


@pytest.fixture(scope="module")
def dust3r() -> MASt3RNet:
    return load_checkpoint(GOLDEN / "dust3r_tiny.pth")


@pytest.fixture(scope="module")
def gold_m() -> dict[str, np.ndarray]:
    return load_golden("model_tiny_a.npz")


@pytest.fixture(scope="module")
def gold_d() -> dict[str, np.ndarray]:
    return load_golden("dust3r_tiny.npz")


def _check_symmetric(net: MASt3RNet, gold: dict[str, np.ndarray], case: str, keys: list[str]) -> None:
    img1, img2 = (torch.from_numpy(gold[f"{case}_img{i}"]) for i in (1, 2))
    ts1, ts2 = (torch.from_numpy(gold[f"{case}_true_shape{i}"]) for i in (1, 2))
    results = net.symmetric_inference(img1, img2, ts1, ts2)
    for view, res in zip(VIEWS, results):
        assert sorted(res) == sorted(keys)
        for key in keys:
            ref = gold[f"{case}_res{view}_{key}"]
            assert_close_golden(res[key], ref, f"{case} res{view} {key}", positive=key in ("conf", "desc_conf"))


def _check_tokens(net: MASt3RNet, gold: dict[str, np.ndarray], case: str) -> None:
    img1, img2 = (torch.from_numpy(gold[f"{case}_img{i}"]) for i in (1, 2))
    feat1, pos1 = net.encode(img1)
    feat2, pos2 = net.encode(img2)
    assert pos1.dtype == torch.int64
    np.testing.assert_array_equal(pos1.numpy(), gold[f"{case}_enc_pos1"])
    np.testing.assert_array_equal(pos2.numpy(), gold[f"{case}_enc_pos2"])
    assert_close_golden(feat1, gold[f"{case}_enc_feat1"], f"{case} enc_feat1")
    assert_close_golden(feat2, gold[f"{case}_enc_feat2"], f"{case} enc_feat2")
    dec11, dec21 = net.decode_tokens(feat1, pos1, feat2, pos2)
    dec22, dec12 = net.decode_tokens(feat2, pos2, feat1, pos1)
    for view, toks in zip(VIEWS, (dec11, dec21, dec22, dec12)):
        assert len(toks) == net.config.dec_depth + 1
        torch.testing.assert_close(toks[0], feat1 if view in ("11", "12") else feat2, rtol=0, atol=0)
        ref = gold[f"{case}_tokens{view}_dec"]
        for layer in range(ref.shape[0]):
            assert_close_golden(toks[layer + 1], ref[layer], f"{case} tokens{view} layer {layer}")


@pytest.mark.parametrize("case", MAST3R_CASES)
def test_mast3r_symmetric_inference_matches_golden(mast3r: MASt3RNet, gold_m: dict, case: str) -> None:
    _check_symmetric(mast3r, gold_m, case, ["pts3d", "conf", "desc", "desc_conf"])


@pytest.mark.parametrize("case", MAST3R_CASES)
def test_mast3r_encoder_decoder_tokens_match_golden(mast3r: MASt3RNet, gold_m: dict, case: str) -> None:
    _check_tokens(mast3r, gold_m, case)


@pytest.mark.parametrize("case", DUST3R_CASES)
def test_dust3r_symmetric_inference_matches_golden(dust3r: MASt3RNet, gold_d: dict, case: str) -> None:
    _check_symmetric(dust3r, gold_d, case, ["pts3d", "conf"])


@pytest.mark.parametrize("case", DUST3R_CASES)
def test_dust3r_encoder_decoder_tokens_match_golden(dust3r: MASt3RNet, gold_d: dict, case: str) -> None:
    _check_tokens(dust3r, gold_d, case)


def test_decode_pair_reuses_encodings_and_matches_golden(mast3r: MASt3RNet, gold_m: dict) -> None:
    """Encode each image once, decode one direction by hand -> the golden res22 / res12."""
    case = "land"
    img1, img2 = (torch.from_numpy(gold_m[f"{case}_img{i}"]) for i in (1, 2))
    f1, p1 = mast3r.encode(img1)
    f2, p2 = mast3r.encode(img2)
    shape = gold_m[f"{case}_true_shape1"]
    res22, res12 = mast3r.decode_pair(f2, p2, f1, p1, torch.from_numpy(shape), (48, 112))
    assert_close_golden(res22["pts3d"], gold_m[f"{case}_res22_pts3d"], "res22 pts3d")
    assert_close_golden(res12["desc"], gold_m[f"{case}_res12_desc"], "res12 desc")
    assert_close_golden(res12["desc_conf"], gold_m[f"{case}_res12_desc_conf"], "res12 desc_conf", positive=True)


def test_heads_run_float32_under_autocast(mast3r: MASt3RNet) -> None:
    g = torch.Generator().manual_seed(1)
    img1, img2 = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1, torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    f1, p1 = mast3r.encode(img1)
    f2, p2 = mast3r.encode(img2)
    ref1, ref2 = mast3r.decode_pair(f1, p1, f2, p2, (32, 48), (32, 48))
    seen: list[torch.dtype] = []
    hook = mast3r.downstream_head2.register_forward_pre_hook(lambda m, args: seen.append(args[0][-1].dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res1, res2 = mast3r.decode_pair(f1, p1, f2, p2, (32, 48), (32, 48))
    finally:
        hook.remove()
    assert seen == [torch.float32]
    for res in (res1, res2):
        assert all(v.dtype == torch.float32 for v in res.values())
        assert all(bool(torch.isfinite(v).all()) for v in res.values())
    # bf16 decoder: close to the float32 run but not equal
    err = float((res2["pts3d"] - ref2["pts3d"]).abs().max() / ref2["pts3d"].abs().max())
    assert 0 < err < 0.1


def test_api_attributes(mast3r: MASt3RNet, dust3r: MASt3RNet) -> None:
    assert mast3r.has_descriptors and not dust3r.has_descriptors
    assert mast3r.patch_size == 16 and mast3r.img_size == (512, 512)
    assert mast3r.arch["landscape_only"] is False and mast3r.arch["enc_depth"] == 2
    assert mast3r.arch["desc_mode"] == "norm" and mast3r.arch["patch_embed_cls"] == "PatchEmbedDust3R"
    assert not mast3r.training and not dust3r.training
    assert not any(p.requires_grad for p in mast3r.parameters())
    assert re.fullmatch(r"[0-9a-f]{16}", mast3r.identity)
    assert mast3r.identity != dust3r.identity
    assert load_checkpoint(GOLDEN / "model_tiny_a.pth").identity == mast3r.identity


def test_layernorm_eps_and_exact_gelu(mast3r: MASt3RNet) -> None:
    """Not caught by the goldens (eps 1e-5 gives 8e-5): check the module settings directly."""
    norms = [m for m in mast3r.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 * 10 * 4 + 1  # enc blocks, enc_norm, dec blocks (4 norms each), dec_norm
    assert all(m.eps == 1e-6 for m in norms)
    gelus = [m for m in mast3r.modules() if isinstance(m, nn.GELU)]
    assert gelus and all(m.approximate == "none" for m in gelus)


def test_bad_inputs_raise_input_error(mast3r: MASt3RNet) -> None:
    img = torch.zeros(1, 3, 48, 64)
    with pytest.raises(InputError, match="multiple of 16"):
        mast3r.symmetric_inference(torch.zeros(1, 3, 50, 64), img)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        mast3r.symmetric_inference(torch.zeros(3, 48, 64), img)
    with pytest.raises(InputError, match="true_shape1"):
        mast3r.symmetric_inference(img, img, true_shape1=torch.tensor([[64, 48]]))
    f, p = mast3r.encode(img)
    with pytest.raises(InputError, match="equal"):
        mast3r.decode_pair(torch.cat([f, f]), torch.cat([p, p]), torch.cat([f, f]), torch.cat([p, p]),
                           torch.tensor([[48, 64], [64, 48]]), (48, 64))  # fmt: skip
    with pytest.raises(InputError, match="do not match"):
        mast3r.decode_pair(f, p, f, p, (64, 64), (48, 64))


def test_rope_relative_positions() -> None:
    """RoPE makes q.k depend only on the position difference (per axis), and leaves position 0 unchanged."""
    rope = RoPE2D(100.0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 1, 16, generator=g, dtype=torch.float64)

    def dot(pq: tuple[int, int], pk: tuple[int, int]) -> torch.Tensor:
        rq = rope(q, torch.tensor([[pq]]))
        rk = rope(k, torch.tensor([[pk]]))
        return (rq * rk).sum(-1)

    torch.testing.assert_close(dot((3, 5), (1, 2)), dot((7, 9), (5, 6)))
    assert not torch.allclose(dot((3, 5), (1, 2)), dot((3, 5), (2, 1)))
    torch.testing.assert_close(rope(q, torch.zeros(1, 1, 2, dtype=torch.int64)), q)
    # the first half of the head dims follows the row, the second the column
    moved = rope(q, torch.tensor([[[0, 4]]]))
    torch.testing.assert_close(moved[..., :8], q[..., :8])
    assert not torch.allclose(moved[..., 8:], q[..., 8:])


@pytest.mark.parametrize(
    "name, head_cls",
    [
        ("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", "CatMLPDPTHead"),
        ("DUSt3R_ViTLarge_BaseDecoder_512_dpt", "DPTHead"),
    ],
)
def test_official_vit_large_layout(name: str, head_cls: str) -> None:
    """The official constructor strings build exactly the official state-dict keys, shapes, dtypes and order."""
    layout = json.loads((GOLDEN / "checkpoint_layout.json").read_text())["official"][name]
    for text in [layout["args_model"], *layout["equivalent_training_readme_form"]]:
        net = build_net(text, device="meta")
        ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]
        assert ours == layout["state_dict"]
        assert len(ours) == layout["n_state_dict_entries"]
        assert sum(p.numel() for p in net.parameters()) == layout["n_unique_parameter_values"]
        assert type(net.downstream_head1).__name__ == head_cls
        assert net.downstream_head1.dpt.hooks == (0, 6, 9, 12)
        for alias, target in layout["aliased_entries"].items():
            assert net.get_submodule(alias.rsplit(".", 1)[0]) is net.get_submodule(target.rsplit(".", 1)[0])


def test_linear_head_shapes() -> None:
    net = build_net(
        "AsymmetricCroCo3DStereo(enc_depth=1, dec_depth=2, enc_embed_dim=32, dec_embed_dim=32, enc_num_heads=2, "
        "dec_num_heads=2, pos_embed='RoPE100', head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf),"
        " conf_mode=('exp', 1, inf))"
    )
    assert net.downstream_head1.proj.weight.shape == (4 * 256, 32)
    res = net.symmetric_inference(torch.zeros(2, 3, 32, 48), torch.zeros(2, 3, 48, 32))
    assert res[0]["pts3d"].shape == (2, 32, 48, 3) and res[1]["conf"].shape == (2, 48, 32)
    assert bool((res[2]["conf"] >= 1).all())
