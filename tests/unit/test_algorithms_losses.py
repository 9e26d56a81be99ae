"""Policy losses, value loss: hand values, naive reference, masks."""
import math

import pytest
import torch

from rlsys.algorithms import (
    POLICY_LOSSES,
    PolicyLossParams,
    get_policy_loss,
    value_loss,
)

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
B = lambda x: torch.tensor(x, dtype=torch.bool)  # noqa: E731
NAN, INF = float("nan"), float("inf")


def policy_inputs(ratios, adv, mask):
    """logprobs with the given ratios to old_logprobs = -1; masked slots get garbage."""
    mask = B(mask)
    old = torch.full(mask.shape, -1.0, dtype=torch.float64)
    logp = old + torch.log(T(ratios))
    logp = torch.where(mask, logp, NAN).requires_grad_()
    old = torch.where(mask, old, INF)
    return logp, old, torch.where(mask, T(adv), 1e9), mask


# ppo_clip, clip [0.8, 1.28], dual clip 3. Token (ratio, A) -> max(-A r, -A clip(r)):
# (1.5,+1): max(-1.5,-1.28) = -1.28 high clip | (0.5,+1): max(-.5,-.8) = -.5
# (0.5,-1): max(.5,.8) = .8 low clip            | (1.2,-2): 2.4
# (4,-1): max(4,1.28) = 4 -> dual min(4,3) = 3  | (2,-1): 2, under the dual bound
# masked                                         | (1,.5): -.5
# d loss / d logp = -A r where unclipped, 0 where a clip is active.
PPO_CASE = policy_inputs([[1.5, 0.5, 0.5, 1.2], [4.0, 2.0, 1.0, 1.0]],
                         [[1, 1, -1, -2], [-1, -1, 0, 0.5]], [[1, 1, 1, 1], [1, 1, 0, 1]])
# approx_kl = mean(r - 1 - ln r) over the 7 valid ratios = 2.4190662 / 7
PPO_STATS = dict(clip_frac_low=1 / 7, clip_frac_high=1 / 7, ratio_mean=10.7 / 7, ratio_max=4.0,
                 approx_kl=0.3455809)

# gspo, sequence clip [0.9, 1.2], 2 valid tokens per row. s = exp(mean log r):
# row 0: ratios (2, 1) -> s = sqrt 2, A=+1: max(-1.414, -1.2) = -1.2 high clip, grad 0
# row 1: ratios (.5, 2) -> s = 1, A=-1: loss 1, grad -A s = 1
# row 2: ratios (1.21, 1) -> s = 1.1, A=+2: max(-2.2, -2.2) = -2.2, grad -A s = -2.2
# row 3: ratios (.64, 1) -> s = .8, A=-1: max(.8, .9) = .9 low clip, grad 0
GSPO_CASE = policy_inputs([[2, 1, 1], [0.5, 2, 1], [1.21, 1, 1], [0.64, 1, 1]],
                          [[1, 1, 0], [-1, -1, 0], [2, 2, 0], [-1, -1, 0]],
                          [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
# GSPO-token: per-token advantages (2, -1) with s = 1.1 unclipped: losses -2.2, 1.1 and the
# gradient stays per token (-A_t s = -2.2, 1.1), not the sequence average (-.55 each).
GSPO_TOKEN_CASE = policy_inputs([[1.21, 1, 1]], [[2, -1, 0]], [[1, 1, 0]])

# name -> list of (inputs, params, expected loss, expected d sum(loss) / d logprobs, stats)
HAND_CASES = {
    "ppo_clip": [
        (PPO_CASE, PolicyLossParams(clip_low=0.2, clip_high=0.28, dual_clip=3.0),
         [[-1.28, -0.5, 0.8, 2.4], [3.0, 2.0, 0, -0.5]],
         [[0, -0.5, 0, 2.4], [0, 2.0, 0, -0.5]],
         dict(PPO_STATS, dual_clip_frac=1 / 7)),
        (PPO_CASE, PolicyLossParams(clip_low=0.2, clip_high=0.28),
         [[-1.28, -0.5, 0.8, 2.4], [4.0, 2.0, 0, -0.5]],
         [[0, -0.5, 0, 2.4], [4.0, 2.0, 0, -0.5]],
         dict(PPO_STATS, dual_clip_frac=0.0)),
    ],
    "gspo": [
        (GSPO_CASE, PolicyLossParams(seq_clip_low=0.1, seq_clip_high=0.2),
         [[-1.2, -1.2, 0], [1, 1, 0], [-2.2, -2.2, 0], [0.9, 0.9, 0]],
         [[0, 0, 0], [1, 1, 0], [-2.2, -2.2, 0], [0, 0, 0]],
         dict(clip_frac_low=2 / 8, clip_frac_high=2 / 8, dual_clip_frac=0.0,
              ratio_mean=(math.sqrt(2) + 1 + 1.1 + 0.8) / 4, ratio_max=math.sqrt(2))),
        (GSPO_TOKEN_CASE, PolicyLossParams(seq_clip_low=0.1, seq_clip_high=0.2),
         [[-2.2, 1.1, 0]], [[-2.2, 1.1, 0]], dict(ratio_mean=1.1, clip_frac_high=0.0)),
    ],
}


def test_every_policy_loss_has_a_hand_case():
    assert set(HAND_CASES) == set(POLICY_LOSSES), "add a hand-computed case for each loss"


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_computed(name):
    for (logp, old, adv, mask), params, loss, grad, stats in HAND_CASES[name]:
        logp.grad = None
        out, st = get_policy_loss(name)(logp, old, adv, mask, params)
        torch.testing.assert_close(out, T(loss), atol=1e-6, rtol=0)
        out.sum().backward()
        torch.testing.assert_close(logp.grad, T(grad), atol=1e-6, rtol=0)
        got = st.as_dict()
        for key, want in stats.items():
            assert got[key] == pytest.approx(want, abs=1e-6), key


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_is_weights_scale_loss_and_carry_no_gradient(name):
    logp, old, adv, mask = PPO_CASE
    w = torch.where(mask, T([[0.5, 2.0, 1.0, 0.25], [1.0, 3.0, 1.0, 0.1]]), NAN).requires_grad_()
    params = PolicyLossParams(seq_clip_low=0.9, seq_clip_high=9.0)
    base, _ = get_policy_loss(name)(logp, old, adv, mask, params)
    weighted, _ = get_policy_loss(name)(logp, old, adv, mask, params, is_weights=w)
    torch.testing.assert_close(weighted, torch.where(mask, base * w, 0.0))
    weighted.sum().backward()
    assert w.grad is None


def test_value_loss_hand_computed():
    # clip .2: (v=1, old=.5, R=2): max(1, (.7-2)^2 = 1.69)/2 = .845;
    # (2, 2.5, 1): max(1, (2.3-1)^2)/2 = .845; (0, 0, 1): .5; masked;
    # (3, 2, 2.5): max(.25, (2.2-2.5)^2 = .09)/2 = .125
    mask = B([1, 1, 1, 0, 1])
    v = torch.where(mask, T([1.0, 2.0, 0.0, 0.0, 3.0]), NAN).requires_grad_()
    old = torch.where(mask, T([0.5, 2.5, 0.0, 0.0, 2.0]), INF)
    ret = torch.where(mask, T([2.0, 1.0, 1.0, 0.0, 2.5]), -INF)
    out = value_loss(v, old, ret, mask, clip=0.2)
    torch.testing.assert_close(out, T([0.845, 0.845, 0.5, 0.0, 0.125]))
    out.sum().backward()
    # clipped branch chosen for the first two -> gradient 0; else v - R
    torch.testing.assert_close(v.grad, T([0.0, 0.0, -1.0, 0.0, 0.5]))
    unclipped = value_loss(v, old, ret, mask, clip=None)
    torch.testing.assert_close(unclipped, T([0.5, 0.5, 0.5, 0, 0.125]))


# ---------------------------------------------------------------- naive reference


def naive_loss(name, logp, old, adv, mask, p):
    """Python-float loops: per token for ppo_clip, per sequence for gspo (values only)."""
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i, row in enumerate(mask):
        idx = [t for t, m in enumerate(row) if m]
        if name == "gspo" and idx:
            s = math.exp(sum(logp[i][t] - old[i][t] for t in idx) / len(idx))
        for t in idx:
            a = adv[i][t]
            if name == "ppo_clip":
                r, lo, hi = math.exp(logp[i][t] - old[i][t]), p.clip_low, p.clip_high
            else:
                r, lo, hi = s, p.seq_clip_low, p.seq_clip_high
            loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            if p.dual_clip is not None and a < 0:
                loss = min(loss, -a * p.dual_clip)
            out[i][t] = loss
    return out


def random_policy_batch(seed, n=6, r=9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, r, generator=g) < 0.7
    mask[0] = False
    old = -torch.rand(n, r, generator=g, dtype=torch.float64) * 3
    logp = old + 0.3 * torch.randn(n, r, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, r).clone()
    return logp, old, adv, mask


PARAM_SETS = [PolicyLossParams(), PolicyLossParams(clip_low=0.2, clip_high=0.28, dual_clip=2.0),
              PolicyLossParams(seq_clip_low=0.05, seq_clip_high=0.1, dual_clip=1.5)]


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("seed", range(3))
def test_vectorised_matches_naive_loop(name, seed):
    logp, old, adv, mask = random_policy_batch(seed)
    for p in PARAM_SETS:
        out, _ = get_policy_loss(name)(logp, old, adv, mask, p)
        want = naive_loss(name, logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), p)
        torch.testing.assert_close(out, T(want), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_gspo_gradient_equals_sequence_level_objective(seed):
    """Token form + per-sequence token mean == the paper's sequence-level gradient."""
    logp, old, adv, mask = random_policy_batch(seed)
    p = PolicyLossParams(seq_clip_low=0.05, seq_clip_high=0.1)
    a = logp.clone().requires_grad_()
    loss, _ = get_policy_loss("gspo")(a, old, adv, mask, p)
    n_tok = mask.sum(1)
    valid = n_tok > 0
    (torch.where(mask, loss, 0.0).sum(1)[valid] / n_tok[valid]).sum().backward()
    b = logp.clone().requires_grad_()
    s = torch.exp(torch.where(mask, b - old, 0.0).sum(1)[valid] / n_tok[valid])
    A = adv[valid, 0]
    torch.maximum(-A * s, -A * s.clamp(1 - 0.05, 1.1)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("garbage", [NAN, INF, -1e30])
def test_masked_positions_do_not_matter(name, garbage):
    logp, old, adv, mask = random_policy_batch(11)
    w = torch.rand(mask.shape, dtype=torch.float64) + 0.5
    results = []
    for fill in (0.0, garbage):
        lp = torch.where(mask, logp, fill).requires_grad_()
        out, st = get_policy_loss(name)(lp, torch.where(mask, old, fill),
                                        torch.where(mask, adv, fill), mask, PARAM_SETS[1],
                                        is_weights=torch.where(mask, w, fill))
        out.sum().backward()
        results.append((out, lp.grad, st.as_dict()))
    (a, ga, sa), (b, gb, sb) = results
    assert torch.equal(a, b) and torch.equal(ga, gb) and sa == sb
    assert torch.isfinite(b).all() and torch.isfinite(gb).all()
    assert (gb[~mask] == 0).all()


def test_params_are_validated():
    with pytest.raises(ValueError, match="dual_clip"):
        PolicyLossParams(dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        PolicyLossParams(clip_low=1.0)
    with pytest.raises(KeyError, match="allowed: gspo, ppo_clip"):
        get_policy_loss("dpo")
