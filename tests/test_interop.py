"""naver MASt3R cache reader/writer: a fake cache built with raw torch.save in the exact layout is read exactly."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsega.errors import InputError
from sparsega.interop import read_mast3r_cache, write_mast3r_cache
from sparsega.types import PairPrediction

IMAGES = ["/data/scene/img0.jpg", "/data/scene/img1.jpg", "relative/img2.png", "img3.JPG"]
OTHER = "/elsewhere/unrelated.jpg"
SHAPES = {0: (16, 24), 1: (24, 16), 2: (16, 16), 3: (8, 24), "other": (16, 24)}
CORRES = "corres_conf=desc_conf_subsample=8"
FIELDS = ("pts11", "conf11", "pts21", "conf21", "pts22", "conf22", "pts12", "conf12", "xy1", "xy2", "match_conf")


def md5(path: str) -> str:
    return hashlib.md5(path.encode()).hexdigest()


def _pass(rng: np.random.Generator, sa: tuple[int, int], sb: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """One decoding direction (X_a, C_a, X_b, C_b) as the reference saves it."""
    return (
        torch.from_numpy(rng.standard_normal((*sa, 3)).astype(np.float32)),
        torch.from_numpy((1 + rng.random(sa)).astype(np.float32)),
        torch.from_numpy(rng.standard_normal((*sb, 3)).astype(np.float32)),
        torch.from_numpy((1 + rng.random(sb)).astype(np.float32)),
    )


def _matches(rng: np.random.Generator, sa: tuple[int, int], sb: tuple[int, int], m: int) -> tuple[torch.Tensor, ...]:
    xy_a = np.stack([rng.integers(0, sa[1], m), rng.integers(0, sa[0], m)], 1).astype(np.int64)
    xy_b = np.stack([rng.integers(0, sb[1], m), rng.integers(0, sb[0], m)], 1).astype(np.int64)
    return torch.from_numpy(xy_a), torch.from_numpy(xy_b), torch.from_numpy((1 + 9 * rng.random(m)).astype(np.float32))


def build_fake_cache(root: Path) -> dict[tuple[int, int], dict[str, np.ndarray | tuple]]:
    """Write a naver-layout cache; return the expected content per pair (i, j) in IMAGES order."""
    rng = np.random.default_rng(0)
    paths = {**dict(enumerate(IMAGES)), "other": OTHER}
    expected: dict[tuple[int, int], dict] = {}

    def save(obj: object, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)

    # (a, b, M, which corres file exists) with a = first image of naver's pair, as naver would have run it
    plan = [
        (0, 1, 11, "ab"),  # normal
        (2, 0, 7, "ba"),  # naver's pair was (2, 0) but only the reverse-named corres exists
        (1, 2, 0, "ab"),  # no match at all
        (3, 0, 5, "ab"),  # naver's pair order (3, 0) opposite to IMAGES order
        (0, "other", 4, "ab"),  # image not requested: ignored
    ]
    for a, b, m, which in plan:
        ha, hb = md5(paths[a]), md5(paths[b])
        fwd_ab = _pass(rng, SHAPES[a], SHAPES[b])  # X_aa, C_aa, X_ba, C_ba (frame a)
        fwd_ba = _pass(rng, SHAPES[b], SHAPES[a])  # X_bb, C_bb, X_ab, C_ab (frame b)
        save(fwd_ab, root / "forward" / ha / f"{hb}.pth")
        save(fwd_ba, root / "forward" / hb / f"{ha}.pth")
        xy_a, xy_b, conf = _matches(rng, SHAPES[a], SHAPES[b], m)
        score = (float(rng.random() + 1), float(conf.sum()), m)
        if which == "ab":
            save((score, (xy_a, xy_b, conf)), root / CORRES / f"{ha}-{hb}.pth")
        else:
            save((score, (xy_b, xy_a, conf)), root / CORRES / f"{hb}-{ha}.pth")
        if b == "other":
            continue
        exp = dict(
            pts11=fwd_ab[0],
            conf11=fwd_ab[1],
            pts21=fwd_ab[2],
            conf21=fwd_ab[3],
            pts22=fwd_ba[0],
            conf22=fwd_ba[1],
            pts12=fwd_ba[2],
            conf12=fwd_ba[3],
            xy1=xy_a,
            xy2=xy_b,
            match_conf=conf,
        )
        exp = {k: v.numpy() for k, v in exp.items()}
        if a < b:
            expected[(a, b)] = {**exp, "score": score}
        else:  # seen from the IMAGES order: swap the roles
            swapped = dict(
                pts11=exp["pts22"],
                conf11=exp["conf22"],
                pts21=exp["pts12"],
                conf21=exp["conf12"],
                pts22=exp["pts11"],
                conf22=exp["conf11"],
                pts12=exp["pts21"],
                conf12=exp["conf21"],
                xy1=exp["xy2"],
                xy2=exp["xy1"],
                match_conf=exp["match_conf"],
            )
            expected[(b, a)] = {**swapped, "score": score}

    # incomplete pairs: (1, 3) only one direction; (2, 3) both directions but no corres file
    h = [md5(p) for p in IMAGES]
    save(_pass(rng, SHAPES[1], SHAPES[3]), root / "forward" / h[1] / f"{h[3]}.pth")
    save(_pass(rng, SHAPES[2], SHAPES[3]), root / "forward" / h[2] / f"{h[3]}.pth")
    save(_pass(rng, SHAPES[3], SHAPES[2]), root / "forward" / h[3] / f"{h[2]}.pth")
    # derived data and other matching settings the reader must ignore
    (root / "canon_views").mkdir()
    (root / "canon_views" / f"{h[0]}_subsample=8_kw={{}}.pth").write_bytes(b"not read")
    (root / "corres_conf=desc_conf_subsample=4").mkdir()
    (root / "forward" / h[0] / "notes.txt").write_text("stray file")
    return expected


def _check(preds: list[PairPrediction], expected: dict[tuple[int, int], dict]) -> None:
    assert [(p.i, p.j) for p in preds] == sorted(expected)
    for p in preds:
        exp = expected[p.i, p.j]
        for name in FIELDS:
            got = getattr(p, name)
            assert isinstance(got, np.ndarray) and got.dtype == exp[name].dtype, name
            np.testing.assert_array_equal(got, exp[name], err_msg=f"pair {(p.i, p.j)} {name}")
        assert p.xy1.dtype == np.int64 and p.pts11.dtype == np.float32
        assert p.score == exp["score"]
        p.validate()


@pytest.fixture
def fake_cache(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "cache"
    return root, build_fake_cache(root)


def test_read_exact(fake_cache: tuple[Path, dict], caplog: pytest.LogCaptureFixture) -> None:
    root, expected = fake_cache
    with caplog.at_level(logging.WARNING, logger="sparsega.interop"):
        preds = read_mast3r_cache(root, IMAGES)
    _check(preds, expected)
    assert [p.n_matches for p in preds] == [11, 7, 5, 0]  # (0,1), (0,2), (0,3), (1,2)
    assert "skipped 2 incomplete pair(s)" in caplog.text


def test_pair_headers_read_no_file(fake_cache: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lazy sequence's headers (PairPrediction.header protocol) carry the pairs' matches and shapes without
    touching the cache files, and PairView indexes a scene from them alone."""
    from sparsega.alignment.inputs import PairView
    from sparsega.io import mast3r_cache

    root, expected = fake_cache
    preds = read_mast3r_cache(root, IMAGES)
    loads: list[object] = []
    real = mast3r_cache._torch_load
    monkeypatch.setattr(mast3r_cache, "_torch_load", lambda *a, **k: loads.append(a) or real(*a, **k))
    view = PairView(preds, None)
    assert loads == []
    for k in range(len(preds)):
        head = preds.pair_header(k)
        (i, j), exp = (head.i, head.j), expected[head.i, head.j]
        assert head.shape1 == exp["conf11"].shape and head.shape2 == exp["conf22"].shape
        for name in ("xy1", "xy2", "match_conf"):
            np.testing.assert_array_equal(getattr(head, name), exp[name])
        assert head.pts11.strides == (0, 0, 0)  # placeholders: no memory behind them
        assert (view.meta[k].i, view.meta[k].j) == (i, j) and view.shapes[i] == exp["conf11"].shape
    assert loads == []
    assert view[0].pts11.shape == expected[view.meta[0].i, view.meta[0].j]["pts11"].shape and len(loads) == 2


def test_read_follows_given_order(fake_cache: tuple[Path, dict]) -> None:
    """Indices follow the order of image_paths; a subset reads only its pairs."""
    root, expected = fake_cache
    order = [3, 2, 1, 0]  # new position k holds old image order[k]
    preds = read_mast3r_cache(root, [IMAGES[k] for k in order])
    new_of_old = {old: new for new, old in enumerate(order)}
    remapped = {}
    for (i, j), exp in expected.items():
        ni, nj = new_of_old[i], new_of_old[j]
        p = PairPrediction(i=i, j=j, **{k: exp[k] for k in FIELDS}, score=exp["score"])
        q = p.swapped() if ni > nj else p
        remapped[min(ni, nj), max(ni, nj)] = {**{k: getattr(q, k) for k in FIELDS}, "score": exp["score"]}
    _check(preds, remapped)

    sub = read_mast3r_cache(root, [IMAGES[2], IMAGES[0]])
    assert [(p.i, p.j) for p in sub] == [(0, 1)]
    np.testing.assert_array_equal(sub[0].pts11, expected[0, 2]["pts22"])
    np.testing.assert_array_equal(sub[0].xy1, expected[0, 2]["xy2"])


def test_path_objects_hash_their_string(fake_cache: tuple[Path, dict]) -> None:
    root, expected = fake_cache
    preds = read_mast3r_cache(str(root), [Path(p) for p in IMAGES])
    _check(preds, expected)


def test_round_trip_write_read(fake_cache: tuple[Path, dict], tmp_path: Path) -> None:
    root, expected = fake_cache
    preds = read_mast3r_cache(root, IMAGES)
    out = tmp_path / "rewritten"
    # give one pair as (j, i) and one without score: the writer must cope with both
    preds_in = [preds[0].swapped(), *preds[1:]]
    preds_in[2] = PairPrediction(**{**preds[2].__dict__, "score": None})
    write_mast3r_cache(out, IMAGES, preds_in)
    assert sorted(p.name for p in out.iterdir()) == ["corres_conf=desc_conf_subsample=8", "forward"]
    back = read_mast3r_cache(out, IMAGES)
    exp = dict(expected)
    k = (preds[2].i, preds[2].j)
    p2 = preds[2]
    means = [float(np.mean(c, dtype=np.float64)) for c in (p2.conf11, p2.conf12, p2.conf21, p2.conf22)]
    exp[k] = {
        **exp[k],
        "score": (float(np.prod(means) ** 0.25), float(np.sum(p2.match_conf, dtype=np.float64)), p2.n_matches),
    }
    _check(back, exp)
    # the files are what naver's tools load: plain tuples of tensors
    h0, h1 = md5(IMAGES[0]), md5(IMAGES[1])
    x11, c11, x21, c21 = torch.load(out / "forward" / h1 / f"{h0}.pth", weights_only=True)
    assert x11.dtype == torch.float32 and x11.shape == (*SHAPES[1], 3) and c21.shape == SHAPES[0]
    score, (xy_a, xy_b, conf) = torch.load(out / CORRES / f"{h1}-{h0}.pth", weights_only=True)
    assert xy_a.dtype == torch.int64 and conf.dtype == torch.float32 and score[2] == 11
    np.testing.assert_array_equal(xy_a.numpy(), expected[0, 1]["xy2"])


def test_write_subsample_and_desc_conf_names(tmp_path: Path, fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    preds = read_mast3r_cache(root, IMAGES)
    write_mast3r_cache(tmp_path / "w", IMAGES, preds, subsample=4, desc_conf="conf")
    assert (tmp_path / "w" / "corres_conf=conf_subsample=4").is_dir()
    assert len(read_mast3r_cache(tmp_path / "w", IMAGES, subsample=4, desc_conf="conf")) == 4


# ------------------------------------------------------------------ errors
def test_missing_folder_and_layout(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_mast3r_cache(tmp_path / "nope", IMAGES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="forward"):
        read_mast3r_cache(tmp_path / "empty", IMAGES)


def test_wrong_matching_parameters(fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    with pytest.raises(InputError, match=r"corres_conf=desc_conf_subsample=16.*found: corres_conf=desc_conf"):
        read_mast3r_cache(root, IMAGES, subsample=16)


def test_no_pair_found(fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    with pytest.raises(InputError, match="no complete pair"):
        read_mast3r_cache(root, ["a.jpg", "b.jpg"])
    with pytest.raises(InputError, match="no complete pair"):
        read_mast3r_cache(root, [IMAGES[1], IMAGES[3]])  # only an incomplete pair
    with pytest.raises(InputError, match="listed twice"):
        read_mast3r_cache(root, [IMAGES[0], IMAGES[0]])


def test_corrupt_file_named(fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    f = root / "forward" / md5(IMAGES[0]) / f"{md5(IMAGES[1])}.pth"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt") as err:
        read_mast3r_cache(root, IMAGES)
    assert str(f) in str(err.value)
    f.write_bytes(b"")
    with pytest.raises(InputError, match="corrupt") as err:
        read_mast3r_cache(root, IMAGES)
    assert str(f) in str(err.value)


def test_wrong_content_named(fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    f = root / CORRES / f"{md5(IMAGES[0])}-{md5(IMAGES[1])}.pth"
    good = f.read_bytes()
    torch.save((1.0, 2.0), f)
    with pytest.raises(InputError, match="expected") as err:
        read_mast3r_cache(root, IMAGES)
    assert str(f) in str(err.value)
    f.write_bytes(good)

    g = root / "forward" / md5(IMAGES[0]) / f"{md5(IMAGES[1])}.pth"
    x = torch.zeros(16, 24, 3)
    x[0, 0, 0] = float("nan")
    torch.save((x, torch.ones(16, 24), torch.zeros(24, 16, 3), torch.ones(24, 16)), g)
    with pytest.raises(InputError, match="NaN") as err:
        read_mast3r_cache(root, IMAGES, lazy=False)
    assert str(g) in str(err.value)
    lazy = read_mast3r_cache(root, IMAGES)  # mapped, not scanned: the NaN reaches the alignment's masking
    assert not np.isfinite(lazy[0].pts11).all()
    torch.save((torch.zeros(16, 24, 3), torch.ones(16, 24), torch.zeros(24, 16, 3)), g)
    with pytest.raises(InputError, match="4-tuple"):
        read_mast3r_cache(root, IMAGES)
    torch.save((torch.zeros(16, 24, 3), torch.ones(16, 25), torch.zeros(24, 16, 3), torch.ones(24, 16)), g)
    with pytest.raises(InputError, match="expected"):
        read_mast3r_cache(root, IMAGES)


def test_matches_outside_image_refused(fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    f = root / CORRES / f"{md5(IMAGES[0])}-{md5(IMAGES[1])}.pth"
    score, (xy_a, xy_b, conf) = torch.load(f, weights_only=True)
    xy_a[0, 0] = 999
    torch.save((score, (xy_a, xy_b, conf)), f)
    with pytest.raises(InputError, match="outside") as err:
        read_mast3r_cache(root, IMAGES)
    assert str(f) in str(err.value)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


class _Custom:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["pickle", "torch_reduce", "torch_class"])
def test_unsafe_file_refused(fake_cache: tuple[Path, dict], tmp_path: Path, kind: str) -> None:
    root, _ = fake_cache
    marker = tmp_path / "PWNED"
    f = root / "forward" / md5(IMAGES[0]) / f"{md5(IMAGES[1])}.pth"
    if kind == "pickle":
        f.write_bytes(pickle.dumps((_Evil(marker), 1, 2, 3)))
    elif kind == "torch_reduce":
        torch.save((_Evil(marker), torch.ones(2), torch.ones(2), torch.ones(2)), f)
    else:
        torch.save((_Custom(), torch.ones(2), torch.ones(2), torch.ones(2)), f)
    if kind != "torch_class":  # sanity: a free unpickling of this file would create the marker
        sanity = tmp_path / "SANITY"
        torch.load(f, weights_only=False) if kind == "torch_reduce" else pickle.loads(f.read_bytes())
        assert marker.exists()
        marker.rename(sanity)
    with pytest.raises(InputError, match="refused") as err:
        read_mast3r_cache(root, IMAGES)
    assert str(f) in str(err.value)
    assert not marker.exists()


def test_writer_checks_indices(tmp_path: Path, fake_cache: tuple[Path, dict]) -> None:
    root, _ = fake_cache
    pred = read_mast3r_cache(root, IMAGES)[0]
    with pytest.raises(InputError, match="indices"):
        write_mast3r_cache(tmp_path / "w", IMAGES[:1], [pred])
