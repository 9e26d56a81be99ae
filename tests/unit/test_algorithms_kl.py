"""KL estimators and entropy: hand values, clamps, masks, use as loss and as reward."""
import math

import pytest
import torch

from rlsys.algorithms import K3_MAX, KL_ESTIMATORS, entropy_from_logits, get_kl_estimator

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
NAN, INF = float("nan"), float("inf")

# d = log(ref/pi) = ref - logp per token: 0, 1, -1.5, 2
LOGP = [[-1.0, -2.0, -0.5, -3.0]]
REF = [[-1.0, -1.0, -2.0, -1.0]]
HAND_CASES = {
    "k1": [[0.0, -1.0, 1.5, -2.0]],  # logp - ref
    "k2": [[0.0, 0.5, 1.125, 2.0]],  # d^2 / 2
    # e^d - 1 - d: e - 2, e^-1.5 + .5, e^2 - 3
    "k3": [[0.0, 0.7182818, 0.7231302, 4.3890561]],
}


def test_every_kl_estimator_has_a_hand_case():
    assert set(HAND_CASES) == set(KL_ESTIMATORS), "add a hand-computed case for each estimator"


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_computed(name):
    out = get_kl_estimator(name)(T(LOGP), T(REF))
    torch.testing.assert_close(out, T(HAND_CASES[name]), atol=1e-6, rtol=0)


def test_k3_is_clamped():
    # d = 25 (clamped to 20 -> e^20 - 21, then to K3_MAX), d = -12 (e^-12 + 11 > 10 -> 10)
    logp = T([[-30.0, -1.0, -1.0]]).requires_grad_()
    out = get_kl_estimator("k3")(logp, T([[-5.0, -13.0, -1e6]]))
    assert K3_MAX == 10.0
    torch.testing.assert_close(out, T([[10.0, 10.0, 10.0]]))
    out.sum().backward()
    assert torch.equal(logp.grad, T([[0.0, 0.0, 0.0]]))  # clamped tokens give no gradient


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
@pytest.mark.parametrize("garbage", [NAN, INF, -INF])
def test_masked_positions_do_not_matter(name, garbage):
    mask = torch.tensor([[True, False, True, True]])
    results = []
    for fill in (0.0, garbage):
        logp = torch.where(mask, T(LOGP), fill).requires_grad_()
        out = get_kl_estimator(name)(logp, torch.where(mask, T(REF), fill), mask)
        out.sum().backward()
        results.append((out, logp.grad))
    (a, ga), (b, gb) = results
    assert torch.equal(a, b) and torch.equal(ga, gb) and torch.isfinite(gb).all()
    assert a[0, 1] == 0


def test_kl_as_loss_pulls_policy_to_reference():
    ref = torch.log_softmax(T([0.0, 1.0, 2.0]), -1)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for _ in range(200):
        logp = torch.log_softmax(logits, -1)
        # on-policy expectation over the 3 tokens instead of sampling
        loss = (logp.exp().detach() * get_kl_estimator("k2")(logp, ref)).sum()
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            logits -= 0.5 * grad
    torch.testing.assert_close(torch.log_softmax(logits, -1), ref, atol=1e-3, rtol=0)


def test_kl_as_reward_penalty_is_detached_and_negative():
    logp = T([[-0.1, -3.0]]).requires_grad_()
    penalty = -0.05 * get_kl_estimator("k3")(logp, T([[-2.0, -1.0]])).detach()
    assert not penalty.requires_grad and (penalty <= 0).all()


def test_entropy_hand_computed():
    logits = T([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -INF, -INF],
                [0.0, -INF, -INF, -INF], [0.0, 0.0, -INF, -INF]]).requires_grad_()
    ent = entropy_from_logits(logits)
    # ln 4; -(.75 ln .75 + .25 ln .25); 0; ln 2
    torch.testing.assert_close(ent, T([1.3862944, 0.5623351, 0.0, 0.6931472]), atol=1e-6, rtol=0)
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert entropy_from_logits(torch.zeros(2, 3, 5, dtype=torch.bfloat16)).dtype == torch.float32
