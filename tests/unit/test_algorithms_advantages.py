"""Advantage estimators: hand-computed values, a naive-loop reference, masks, errors."""
import math
import random

import pytest
import torch

from rlsys.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageParams,
    get_advantage,
)

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
B = lambda x: torch.tensor(x, dtype=torch.bool)  # noqa: E731
NAN, INF = float("nan"), float("inf")

# Groups: id 5 = [2, 0, 1, 1] (mean 1, unbiased std sqrt(2/3)), id 2 = [3, 7] (mean 5, std
# 2*sqrt(2)), id 9 = [4] (singleton), id 0 = [1, 1] (std 0). Row 3 has no valid token.
SEQ_INPUTS = dict(
    rewards=T([2, 0, 1, 1, 3, 7, 4, 1, 1]),
    group_index=torch.tensor([5, 5, 5, 5, 2, 2, 9, 0, 0]),
    response_mask=B([[1, 1], [1, 0], [1, 1], [0, 0], [1, 1], [1, 1], [1, 1], [1, 0], [1, 1]]),
)
# 1/sqrt(2/3) = 1.2247449, 2/(2*sqrt(2)) = 0.7071068
GRPO_STD = [[1.2247449, 1.2247449], [-1.2247449, 0], [0, 0], [0, 0], [-0.7071068, -0.7071068],
            [0.7071068, 0.7071068], [0, 0], [0, 0], [0, 0]]
GRPO_NOSTD = [[1, 1], [-1, 0], [0, 0], [0, 0], [-2, -2], [2, 2], [0, 0], [0, 0], [0, 0]]
# leave-one-out: 2 - 2/3 = 4/3, 0 - 4/3, 1 - 1; 3 - 7, 7 - 3; singleton 0; 1 - 1.
RLOO = [[4 / 3, 4 / 3], [-4 / 3, 0], [0, 0], [0, 0], [-4, -4], [4, 4], [0, 0], [0, 0], [0, 0]]

# reinforce_pp, gamma 0.5. Row 0 token rewards [-.1, -.2, -.3 + 1]: returns G2 = .7,
# G1 = -.2 + .5*.7 = .15, G0 = -.1 + .5*.15 = -.025. Row 1 (last valid t=1, reward 0):
# G1 = -.1, G0 = -.1 + .5*(-.1) = -.15. Valid returns mean .115, population std .3096773.
RPP_INPUTS = dict(
    rewards=T([1, 0]),
    group_index=torch.tensor([0, 0]),
    response_mask=B([[1, 1, 1], [1, 1, 0]]),
    token_rewards=T([[-0.1, -0.2, -0.3], [-0.1, -0.1, 99.0]]),
)
RPP_RETURNS = [[-0.025, 0.15, 0.7], [-0.15, -0.1, 0]]
RPP_ADV = [[-0.452084, 0.113021, 1.889064], [-0.855730, -0.694271, 0]]

# gae, gamma .9, lam .8 (gamma*lam = .72). Row 0: r = [0, -.1, 1], V = [.5, .4, .2]:
# d2 = 1 - .2 = .8; d1 = -.1 + .9*.2 - .4 = -.32, A1 = -.32 + .72*.8 = .256;
# d0 = .9*.4 - .5 = -.14, A0 = -.14 + .72*.256 = .04432. Row 1: r = [.2, -1], V = [.1, .3]:
# A1 = -1 - .3 = -1.3; d0 = .2 + .9*.3 - .1 = .37, A0 = .37 - .72*1.3 = -.566.
GAE_INPUTS = dict(
    rewards=T([1, -1]),
    group_index=torch.tensor([0, 1]),
    response_mask=B([[1, 1, 1], [1, 1, 0]]),
    values=T([[0.5, 0.4, 0.2], [0.1, 0.3, 7.0]]),
    token_rewards=T([[0, -0.1, 0], [0.2, 0, 55.0]]),
)
GAE_ADV = [[0.04432, 0.256, 0.8], [-0.566, -1.3, 0]]
GAE_RETURNS = [[0.54432, 0.656, 1.0], [-0.466, -1.0, 0]]

# name -> list of (inputs, params, expected advantages, expected returns)
HAND_CASES = {
    "grpo": [
        (SEQ_INPUTS, AdvantageParams(norm_by_std=True), GRPO_STD, GRPO_STD),
        (SEQ_INPUTS, AdvantageParams(norm_by_std=False), GRPO_NOSTD, GRPO_NOSTD),
    ],
    "rloo": [(SEQ_INPUTS, AdvantageParams(), RLOO, RLOO)],
    "reinforce_pp": [
        (RPP_INPUTS, AdvantageParams(gamma=0.5, whiten=True), RPP_ADV, RPP_RETURNS),
        (RPP_INPUTS, AdvantageParams(gamma=0.5, whiten=False), RPP_RETURNS, RPP_RETURNS),
    ],
    "gae": [(GAE_INPUTS, AdvantageParams(gamma=0.9, lam=0.8, whiten=False), GAE_ADV, GAE_RETURNS)],
}


def test_every_advantage_has_a_hand_case():
    assert set(HAND_CASES) == set(ADVANTAGES), "add a hand-computed case for each estimator"


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_computed(name):
    for inputs, params, adv, ret in HAND_CASES[name]:
        out = get_advantage(name)(AdvantageInputs(**inputs), params)
        torch.testing.assert_close(out.advantages, T(adv), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.returns, T(ret), atol=1e-5, rtol=0)


def test_gae_whitened_keeps_returns_and_is_standardised():
    out = get_advantage("gae")(AdvantageInputs(**GAE_INPUTS), AdvantageParams(gamma=0.9, lam=0.8))
    m = GAE_INPUTS["response_mask"]
    torch.testing.assert_close(out.returns, T(GAE_RETURNS))
    valid = out.advantages[m]
    assert abs(valid.mean().item()) < 1e-9
    assert abs(valid.std(unbiased=False).item() - 1) < 1e-5
    assert (out.advantages[~m] == 0).all()


# ---------------------------------------------------------------- naive reference


def naive(name, rewards, groups, mask, values, token_rewards, p):
    """Per-sequence Python loops over lists of floats, independent of the vectorised code."""
    n, r = len(mask), len(mask[0])
    per_seq = [0.0] * n
    if name in ("grpo", "rloo"):
        for i in range(n):
            mates = [rewards[j] for j in range(n) if groups[j] == groups[i]]
            if len(mates) < 2:
                continue
            if name == "rloo":
                per_seq[i] = rewards[i] - (sum(mates) - rewards[i]) / (len(mates) - 1)
            else:
                mean = sum(mates) / len(mates)
                std = math.sqrt(sum((x - mean) ** 2 for x in mates) / (len(mates) - 1))
                per_seq[i] = (rewards[i] - mean) / (std + p.eps if p.norm_by_std else 1.0)
        out = [[per_seq[i] if mask[i][t] else 0.0 for t in range(r)] for i in range(n)]
        return out, out
    adv = [[0.0] * r for _ in range(n)]
    ret = [[0.0] * r for _ in range(n)]
    for i in range(n):
        idx = [t for t in range(r) if mask[i][t]]
        rew = [token_rewards[i][t] for t in idx]
        if idx:
            rew[-1] += rewards[i]
        g, a, v_next = 0.0, 0.0, 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            if name == "reinforce_pp":
                g = rew[k] + p.gamma * g
                adv[i][t] = ret[i][t] = g
            else:
                v = values[i][t]
                a = rew[k] + p.gamma * v_next - v + p.gamma * p.lam * a
                v_next = v
                adv[i][t], ret[i][t] = a, a + v
    if p.whiten:
        valid = [adv[i][t] for i in range(n) for t in range(r) if mask[i][t]]
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((x - mean) ** 2 for x in valid) / len(valid))
        adv = [[(adv[i][t] - mean) / (std + p.eps) if mask[i][t] else 0.0 for t in range(r)]
               for i in range(n)]
    return adv, ret


def random_batch(seed, r=7, garbage=0.0):
    rng = random.Random(seed)
    sizes = [1, 2, 3, 5, 4]
    ids = rng.sample(range(100), len(sizes))  # arbitrary, non-contiguous group ids
    groups = [gid for gid, s in zip(ids, sizes) for _ in range(s)]
    rng.shuffle(groups)
    n = len(groups)
    rewards = [rng.choice([0.0, 1.0, rng.uniform(-2, 2)]) for _ in range(n)]
    mask = []
    for i in range(n):
        start, length = rng.randint(0, 2), rng.randint(0, r)
        row = [start <= t < start + length for t in range(r)]
        if rng.random() < 0.3:  # a hole, as for masked tool output inside a response
            row[rng.randrange(r)] = False
        mask.append(row)
    mask[0] = [False] * r  # always one empty row
    values = [[rng.uniform(-1, 1) if m else garbage for m in row] for row in mask]
    tok = [[rng.uniform(-0.3, 0.1) if m else garbage for m in row] for row in mask]
    return rewards, groups, mask, values, tok


PARAM_SETS = {
    "grpo": [AdvantageParams(norm_by_std=True), AdvantageParams(norm_by_std=False)],
    "rloo": [AdvantageParams()],
    "reinforce_pp": [AdvantageParams(gamma=0.9), AdvantageParams(gamma=1.0, whiten=False)],
    "gae": [AdvantageParams(gamma=0.95, lam=0.9),
            AdvantageParams(gamma=1.0, lam=1.0, whiten=False)],
}


def _inputs(name, rewards, groups, mask, values, tok):
    seq_only = name in ("grpo", "rloo")
    return AdvantageInputs(
        rewards=T(rewards),
        group_index=torch.tensor(groups),
        response_mask=B(mask),
        values=None if seq_only else T(values),
        token_rewards=None if seq_only else T(tok),
    )


@pytest.mark.parametrize("name", sorted(PARAM_SETS))
@pytest.mark.parametrize("seed", range(4))
def test_vectorised_matches_naive_loop(name, seed):
    rewards, groups, mask, values, tok = random_batch(seed)
    for p in PARAM_SETS[name]:
        out = get_advantage(name)(_inputs(name, rewards, groups, mask, values, tok), p)
        adv, ret = naive(name, rewards, groups, mask, values, tok, p)
        torch.testing.assert_close(out.advantages, T(adv), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(out.returns, T(ret), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(PARAM_SETS))
@pytest.mark.parametrize("garbage", [NAN, INF, -1e30])
def test_masked_positions_do_not_matter(name, garbage):
    clean = random_batch(7, garbage=0.0)
    dirty = random_batch(7, garbage=garbage)
    for p in PARAM_SETS[name]:
        a = get_advantage(name)(_inputs(name, *clean), p)
        b = get_advantage(name)(_inputs(name, *dirty), p)
        assert torch.equal(a.advantages, b.advantages) and torch.equal(a.returns, b.returns)
        assert torch.isfinite(b.advantages).all()


def test_integer_rewards_and_group_ids_in_any_order():
    out = get_advantage("rloo")(
        AdvantageInputs(torch.tensor([1, 0, 0]), torch.tensor([3, 3, 3]), B([[1], [1], [1]])),
        AdvantageParams(),
    )
    torch.testing.assert_close(out.advantages, torch.tensor([[1.0], [-0.5], [-0.5]]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="values"):
        get_advantage("gae")(AdvantageInputs(**RPP_INPUTS), AdvantageParams())
    with pytest.raises(ValueError, match="token_rewards"):
        get_advantage("grpo")(AdvantageInputs(**RPP_INPUTS), AdvantageParams())
    with pytest.raises(ValueError, match=r"values must be \[N, R\]=\(2, 3\), got \(2, 2\)"):
        get_advantage("gae")(AdvantageInputs(**dict(GAE_INPUTS, values=torch.zeros(2, 2))),
                             AdvantageParams())
    with pytest.raises(ValueError, match="rewards must be"):
        get_advantage("grpo")(AdvantageInputs(**dict(SEQ_INPUTS, rewards=T([1.0]))),
                              AdvantageParams())
    with pytest.raises(KeyError, match="allowed: gae, grpo, reinforce_pp, rloo"):
        get_advantage("ppo")
