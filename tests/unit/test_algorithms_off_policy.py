"""Off-policy corrections (rlsys/algorithms/off_policy.py) against hand-computed weights."""
import math

import pytest
import torch

from rlsys.algorithms import OFF_POLICY_CORRECTIONS, get_off_policy_correction, truncated_is_weights

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
NAN = float("nan")

# Two sequences; the second's last slot is padding (NaN garbage there must not matter).
# rho = pi_prox / pi_behav: sequence 0 [0.25, 1.5, 3] (product 1.125, geometric mean 1.0400),
# sequence 1 [1, 1] (product 1, geometric mean 1).
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
BEHAV = torch.where(MASK, T([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]]), NAN)
PROX = torch.where(MASK, BEHAV + torch.log(T([[0.25, 1.5, 3.0], [1.0, 1.0, 1.0]])), NAN)

# name, cap -> weights, clip_frac, masked_frac, mean, max (low_frac = high_frac = 1/5 always:
# 0.25 < 1/2 and 3 > 2 of the five valid tokens, for cap 2)
CASES = {
    ("token_truncate", 2.0): ([[0.25, 1.5, 2.0], [1.0, 1.0, 0.0]], 1 / 5, 0.0, 5.75 / 5, 2.0),
    ("seq_truncate", 2.0): ([[1.125] * 3, [1.0, 1.0, 0.0]], 0.0, 0.0, 5.375 / 5, 1.125),
    ("seq_truncate", 1.1): ([[1.1] * 3, [1.0, 1.0, 0.0]], 3 / 5, 0.0, 5.3 / 5, 1.1),
    ("token_mask", 2.0): ([[0.0, 1.5, 0.0], [1.0, 1.0, 0.0]], 0.0, 2 / 5, 3.5 / 5, 1.5),
    ("seq_mask", 2.0): ([[0.25, 1.5, 3.0], [1.0, 1.0, 0.0]], 0.0, 0.0, 6.75 / 5, 3.0),
    ("seq_mask", 1.02): ([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], 0.0, 3 / 5, 2.0 / 5, 1.0),
}


def test_every_correction_has_a_hand_case():
    assert {name for name, _ in CASES} == set(OFF_POLICY_CORRECTIONS)


@pytest.mark.parametrize("name,cap", sorted(CASES))
def test_hand_computed(name, cap):
    weights, clip, masked, mean, mx = CASES[(name, cap)]
    w, st = get_off_policy_correction(name)(PROX, BEHAV, cap, MASK)
    torch.testing.assert_close(w, T(weights))
    assert not w.requires_grad
    assert float(st.clip_frac) == pytest.approx(clip)
    assert float(st.masked_frac) == pytest.approx(masked)
    assert float(st.mean) == pytest.approx(mean)
    assert float(st.max) == pytest.approx(mx)
    if cap == 2.0:
        assert float(st.low_frac) == pytest.approx(1 / 5) and float(st.high_frac) == pytest.approx(1 / 5)


def test_truncated_is_weights_is_token_truncate():
    w, st = truncated_is_weights(PROX, BEHAV, 2.0, MASK)
    torch.testing.assert_close(w, T(CASES[("token_truncate", 2.0)][0]))
    # a ratio that would overflow exp() is still capped
    w, _ = truncated_is_weights(T([[0.0]]), T([[-1000.0]]), cap=5.0)
    assert w.item() == pytest.approx(5.0)


@pytest.mark.parametrize("name", ["token_mask", "seq_mask"])
def test_masked_forms_need_a_band(name):
    with pytest.raises(ValueError, match="c > 1"):
        get_off_policy_correction(name)(PROX, BEHAV, 1.0, MASK)


def test_unknown_name_lists_the_allowed():
    with pytest.raises(ValueError, match="seq_mask"):
        get_off_policy_correction("icepop")


def test_a_long_sequence_keeps_its_geometric_band():
    # 40 tokens each 1.05x likelier: the product (7.04) leaves any small band, the geometric mean
    # (1.05) does not, so seq_mask keeps the sequence where seq_truncate caps it.
    behav = torch.full((1, 40), -1.0, dtype=torch.float64)
    prox = behav + math.log(1.05)
    w, st = get_off_policy_correction("seq_mask")(prox, behav, 1.1)
    assert float(st.masked_frac) == 0.0 and w[0, 0].item() == pytest.approx(1.05)
    w, st = get_off_policy_correction("seq_truncate")(prox, behav, 2.0)
    assert w[0, 0].item() == pytest.approx(2.0) and float(st.clip_frac) == 1.0
