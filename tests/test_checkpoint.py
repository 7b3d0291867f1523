"""Checkpoint reading: constructor-string parsing (never eval'd), strict loading, refusal of bad files."""

from __future__ import annotations

import argparse
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

from sparsega.errors import CheckpointError, ConfigError
from sparsega.frontend.model import MASt3RNet, build_net, config_from_constructor, load_checkpoint, parse_constructor
from sparsega.frontend.model.checkpoint import load_state_dict_strict

from conftest import GOLDEN

OFFICIAL_MAST3R = (
    "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, "
    "dec_num_heads=12, pos_embed='RoPE100', patch_embed_cls='PatchEmbedDust3R', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "desc_mode=('norm'), two_confs=True, desc_conf_mode=('exp', 0, inf))"
)
README_MAST3R = (
    "AsymmetricMASt3R(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12, "
    "two_confs=True, desc_conf_mode=('exp', 0, inf), desc_mode=('norm'), landscape_only=True)"
)
SMALL = (
    "AsymmetricCroCo3DStereo(enc_depth=1, dec_depth=2, enc_embed_dim=32, dec_embed_dim=32, enc_num_heads=2, "
    "dec_num_heads=2, pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(64, 64), "
    "head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf))"
)


def _save(path: Path, state: dict, text: str, **extra: object) -> Path:
    torch.save({"model": state, "args": argparse.Namespace(model=text), **extra}, path)
    return path


@pytest.fixture(scope="module")
def small_net() -> MASt3RNet:
    torch.manual_seed(0)
    return build_net(SMALL)


@pytest.fixture
def small_file(tmp_path: Path, small_net: MASt3RNet) -> Path:
    return _save(tmp_path / "small.pth", small_net.state_dict(), SMALL, epoch=3)


def _assert_one_line(exc: pytest.ExceptionInfo, path: Path | None = None) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    if path is not None:
        assert str(path) in msg


# ---------------------------------------------------------------------------------------------- parser


def test_parse_official_string() -> None:
    cls, kw = parse_constructor(OFFICIAL_MAST3R)
    assert cls == "AsymmetricMASt3R"
    assert kw["depth_mode"] == ("exp", -math.inf, math.inf)
    assert kw["conf_mode"] == ("exp", 1, math.inf)
    assert kw["desc_mode"] == "norm"  # ('norm') is a parenthesised string, not a tuple
    assert kw["img_size"] == (512, 512) and kw["two_confs"] is True and kw["enc_depth"] == 24


def test_parse_literals() -> None:
    _, kw = parse_constructor("C(a=-inf, b=+3, c=(1, (2.5, 'x')), d=None, e=False, f=[1, -2], g=('t',))")
    assert kw == {"a": -math.inf, "b": 3, "c": (1, (2.5, "x")), "d": None, "e": False, "f": (1, -2), "g": ("t",)}


def test_keyword_order_alias_and_landscape_only() -> None:
    cfg_a, kw_a = config_from_constructor(OFFICIAL_MAST3R)
    cfg_b, kw_b = config_from_constructor(README_MAST3R)
    assert cfg_a == cfg_b
    assert kw_a["landscape_only"] is False and kw_b["landscape_only"] is False  # absent / True -> False
    assert kw_b["patch_embed_cls"] == "PatchEmbedDust3R"  # ManyAR_PatchEmbed alias
    assert cfg_a.patch_size == 16 and cfg_a.mlp_ratio == 4 and cfg_a.norm_im2_in_dec  # defaults
    assert cfg_a.rope_base == 100 and cfg_a.desc_dim == 24 and cfg_a.desc_conf_mode == ("exp", 0, math.inf)


def test_desc_conf_mode_falls_back_to_conf_mode() -> None:
    text = OFFICIAL_MAST3R.replace(", desc_conf_mode=('exp', 0, inf)", "")
    cfg, _ = config_from_constructor(text)
    assert cfg.desc_conf_mode == cfg.conf_mode == ("exp", 1, math.inf)


def test_constructor_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for text in [
        f"AsymmetricMASt3R(enc_depth=__import__('os').system('touch {marker}'))",
        f"__import__('os').system('touch {marker}')",
        "AsymmetricMASt3R(enc_depth=os.sep)",
        "AsymmetricMASt3R(enc_depth=2 + 3)",
        "AsymmetricMASt3R(24, dec_depth=12)",
        "AsymmetricMASt3R(**{'enc_depth': 2})",
        "AsymmetricMASt3R(enc_depth=2",
    ]:
        with pytest.raises(CheckpointError) as exc:
            config_from_constructor(text)
        _assert_one_line(exc)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("CroCoNet(enc_depth=2)", "unknown model class 'CroCoNet'"),
        ("AsymmetricMASt3R(enc_depht=2)", "enc_depht"),
        (OFFICIAL_MAST3R.replace("'catmlp+dpt'", "'dpt+mlp'"), "head_type 'dpt\\+mlp'"),
        (SMALL.replace("output_mode='pts3d'", "output_mode='pts3d+desc24'"), "needs AsymmetricMASt3R"),
        (SMALL.replace("'RoPE100'", "'cosine'"), "pos_embed"),
        (SMALL.replace("'ManyAR_PatchEmbed'", "'PatchEmbedFancy'"), "patch_embed_cls"),
        (SMALL.replace("('exp', -inf, inf)", "('exp', 0, 10)"), "bounded depth_mode"),
        (SMALL.replace("enc_num_heads=2", "enc_num_heads=3"), "heads"),
    ],
)
def test_unsupported_architectures(text: str, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as exc:
        build_net(text, device="meta")
    _assert_one_line(exc)


# ---------------------------------------------------------------------------------------------- files


def test_small_checkpoint_round_trip(small_file: Path, small_net: MASt3RNet) -> None:
    net = load_checkpoint(small_file)
    assert isinstance(net, MASt3RNet) and not net.training and net.device.type == "cpu"
    for (k, a), (k2, b) in zip(small_net.state_dict().items(), net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    img = torch.rand(1, 3, 32, 48) * 2 - 1
    ours = net.symmetric_inference(img, img)
    ref = small_net.symmetric_inference(img, img)
    torch.testing.assert_close(ours[1]["pts3d"], ref[1]["pts3d"], rtol=0, atol=0)
    assert load_checkpoint(small_file).identity == net.identity


def test_identity_follows_weights(tmp_path: Path, small_net: MASt3RNet, small_file: Path) -> None:
    state = {k: v.clone() for k, v in small_net.state_dict().items()}
    state["enc_norm.bias"][0] += 1e-3
    other = _save(tmp_path / "other.pth", state, SMALL)
    assert load_checkpoint(other).identity != load_checkpoint(small_file).identity


def test_missing_dec_blocks2_copies_dec_blocks(tmp_path: Path, small_net: MASt3RNet) -> None:
    state = {k: v for k, v in small_net.state_dict().items() if not k.startswith("dec_blocks2.")}
    net = load_checkpoint(_save(tmp_path / "croco.pth", state, SMALL))
    sd = net.state_dict()
    for k, v in sd.items():
        if k.startswith("dec_blocks2."):
            assert torch.equal(v, sd["dec_blocks." + k[len("dec_blocks2.") :]])


def test_missing_and_unexpected_keys(tmp_path: Path, small_net: MASt3RNet) -> None:
    state = dict(small_net.state_dict())
    del state["enc_blocks.0.attn.qkv.weight"], state["enc_norm.bias"]
    path = _save(tmp_path / "missing.pth", state, SMALL)
    with pytest.raises(CheckpointError, match="2 missing key.*enc_blocks.0.attn.qkv.weight") as exc:
        load_checkpoint(path)
    _assert_one_line(exc, path)
    state = dict(small_net.state_dict(), **{"extra.weight": torch.zeros(2)})
    path = _save(tmp_path / "unexpected.pth", state, SMALL)
    with pytest.raises(CheckpointError, match="unexpected key.*extra.weight") as exc:
        load_checkpoint(path)
    _assert_one_line(exc, path)
    state = dict(small_net.state_dict(), **{"enc_norm.bias": torch.zeros(5)})
    path = _save(tmp_path / "shape.pth", state, SMALL)
    with pytest.raises(CheckpointError, match="wrong shape.*enc_norm.bias") as exc:
        load_checkpoint(path)


def test_unknown_architecture_in_file(tmp_path: Path, small_net: MASt3RNet) -> None:
    path = _save(tmp_path / "arch.pth", small_net.state_dict(), SMALL.replace("AsymmetricCroCo3DStereo", "Net3D"))
    with pytest.raises(CheckpointError, match="unknown model class 'Net3D'") as exc:
        load_checkpoint(path)
    _assert_one_line(exc, path)


def test_random_zero_and_truncated_files(tmp_path: Path) -> None:
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    trunc = tmp_path / "truncated.pth"
    data = (GOLDEN / "model_tiny_a.pth").read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    for path in (rnd, empty, trunc, tmp_path / "absent.pth"):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        _assert_one_line(exc, path)


def test_wrong_container_contents(tmp_path: Path) -> None:
    cases = {
        "list.pth": [torch.zeros(2)],
        "noargs.pth": {"model": {}},
        "noctor.pth": {"model": {}, "args": argparse.Namespace(lr=1.0)},
        "badmodel.pth": {"model": [1, 2], "args": argparse.Namespace(model=SMALL)},
    }
    for name, obj in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        _assert_one_line(exc, path)


class _Evil:
    """Unpickling this object would run a shell command creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"model": {}, "args": _Evil(marker)}, zipped)
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"model": {}, "args": _Evil(marker)}, protocol=2))
    assert not marker.exists()
    for path in (zipped, raw):
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        _assert_one_line(exc, path)
    assert not marker.exists()
    # sanity: the payload is live (plain pickle would run it)
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_dpt_aliases_filled_from_either_name() -> None:
    """A state dict that stores only one name of each aliased DPT conv (e.g. deduplicated) still loads strictly."""
    text = OFFICIAL_MAST3R.replace("enc_depth=24", "enc_depth=1").replace("dec_depth=12", "dec_depth=4")
    ref = build_net(text, device="meta")
    state = {k: torch.empty(v.shape) for k, v in ref.state_dict().items() if ".scratch.layer_rn." not in k}
    net = build_net(text, device="meta")
    load_state_dict_strict(net, state, "dedup")
    assert net.downstream_head2.dpt.scratch.layer_rn[3].weight.device.type == "cpu"
    del state["downstream_head1.dpt.scratch.layer2_rn.weight"]
    with pytest.raises(CheckpointError, match="missing key.*layer2_rn"):
        load_state_dict_strict(build_net(text, device="meta"), state, "dedup")


def test_invalid_device_is_a_config_error(small_file: Path) -> None:
    with pytest.raises(ConfigError, match="cpux"):
        load_checkpoint(small_file, device="cpux")
