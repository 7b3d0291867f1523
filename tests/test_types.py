import dataclasses

import numpy as np
import pytest

from sparsega import AlignConfig, ConfigError, InputError, PairPrediction


def test_defaults_are_reference():
    c = AlignConfig()
    assert (c.subsample, c.matching_conf_thr, c.canonical_mode, c.kinematic_mode) == (
        8,
        5.0,
        "avg-angle",
        "hclust-ward",
    )
    assert (c.lr1, c.niter1, c.loss_gamma1, c.lr2, c.niter2, c.loss_gamma2) == (0.07, 300, 1.5, 0.01, 300, 0.5)
    assert (c.fallback_gamma, c.fallback_weight, c.lr_schedule) == (1.1, 0.01, "cosine")
    assert c.device == "auto" and c.dtype == "float32"


@pytest.mark.parametrize(
    "overrides,word",
    [
        ({"niter1": -1}, "niter1"),
        ({"lr2": 0.0}, "lr2"),
        ({"subsample": 3}, "subsample"),
        ({"kinematic_mode": "nope"}, "kinematic_mode"),
        ({"bogus": 1}, "bogus"),
        ({"lr1": float("nan")}, "lr1"),
        ({"lr1_procrustes": 0.0}, "lr1_procrustes"),
        ({"loss_backend": "simd"}, "loss_backend"),
    ],
)
def test_bad_options_name_the_field(overrides, word):
    with pytest.raises(ConfigError, match=word):
        AlignConfig().replace(**overrides)


def _pred(m=3):
    z = np.zeros
    return PairPrediction(
        0,
        1,
        z((4, 6, 3)),
        z((4, 6)),
        z((5, 7, 3)),
        z((5, 7)),
        z((5, 7, 3)),
        z((5, 7)),
        z((4, 6, 3)),
        z((4, 6)),
        z((m, 2), np.int64),
        z((m, 2), np.int64),
        z(m, np.float32),
    )


def test_pair_prediction_swap_and_validate():
    p = _pred()
    p.validate()
    s = p.swapped()
    assert (s.i, s.j, s.shape1, s.shape2) == (1, 0, (5, 7), (4, 6))
    s.validate()
    bad = dataclasses.replace(_pred(), pts21=np.zeros((4, 6, 3)))
    with pytest.raises(InputError, match="pts21"):
        bad.validate()
    out = _pred()
    out.xy1[0] = (6, 0)
    with pytest.raises(InputError, match="xy1"):
        out.validate()
