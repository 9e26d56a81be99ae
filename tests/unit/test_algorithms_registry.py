"""Registries: look-up errors list the allowed names; the package imports nothing heavy;
and an end-to-end sign check of every advantage x policy loss x aggregation."""
import ast
import itertools
import pathlib

import pytest
import torch

import rlsys.algorithms as A

FAMILIES = {
    "advantage estimator": (A.ADVANTAGES, A.get_advantage, A.ADVANTAGE_NAMES),
    "policy loss": (A.POLICY_LOSSES, A.get_policy_loss, A.POLICY_LOSS_NAMES),
    "KL estimator": (A.KL_ESTIMATORS, A.get_kl_estimator, A.KL_ESTIMATOR_NAMES),
    "loss aggregation": (A.LOSS_AGGREGATIONS, A.get_loss_aggregation, A.LOSS_AGGREGATION_NAMES),
}


def test_registered_names():
    assert A.ADVANTAGE_NAMES == ("gae", "grpo", "reinforce_pp", "rloo")
    assert A.POLICY_LOSS_NAMES == ("gspo", "ppo_clip")
    assert A.KL_ESTIMATOR_NAMES == ("k1", "k2", "k3")
    assert A.LOSS_AGGREGATION_NAMES == (
        "seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean")


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_unknown_name_lists_allowed_names(kind):
    registry, getter, names = FAMILIES[kind]
    assert set(registry.keys()) == set(names)
    for name in names:
        assert getter(name) is registry[name]
    for exc in (KeyError, ValueError):  # a config validator may catch either
        with pytest.raises(exc) as info:
            getter("nope")
        msg = str(info.value)
        assert msg.startswith(f"unknown {kind} 'nope'") and msg.endswith(", ".join(names))
    with pytest.raises(KeyError, match="allowed"):
        registry["nope"]
    assert registry.get("nope") is None  # plain dict semantics otherwise


def test_duplicate_registration_is_an_error():
    reg = A.Registry("thing")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)


def test_imports_only_torch_and_stdlib():
    # Static, not a subprocess import: a cold `import torch` alone can take 10 s on a busy box,
    # and in-process sys.modules is polluted by whatever other tests imported.
    allowed = {"torch", "math", "dataclasses", "typing", "__future__"}
    for path in pathlib.Path(A.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            assert {m.split(".")[0] for m in mods} <= allowed, (path.name, mods)


# ---------------------------------------------------------------- sign check


def seq_logprobs(logits, tokens, mask):
    """[R, V] shared per-position logits (one prompt), [N, R] tokens -> per-token logp [N, R]."""
    logp = torch.log_softmax(logits, -1).expand(tokens.shape[0], -1, -1)
    return torch.where(mask, logp.gather(-1, tokens.clamp(min=0)[..., None])[..., 0], 0.0)


@pytest.mark.parametrize("adv_name,loss_name,agg_name", list(itertools.product(
    A.ADVANTAGE_NAMES, A.POLICY_LOSS_NAMES, A.LOSS_AGGREGATION_NAMES)))
def test_one_step_raises_better_sample_and_lowers_worse(adv_name, loss_name, agg_name):
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.1 * torch.randn(3, 5))
    tokens = torch.tensor([[0, 1, 2], [3, 3, -1]])  # sample 1 is padded at the end
    mask = tokens >= 0
    inputs = A.AdvantageInputs(
        rewards=torch.tensor([1.0, 0.0]), group_index=torch.tensor([0, 0]), response_mask=mask,
        values=torch.zeros(2, 3) if adv_name == "gae" else None,
    )
    adv = A.get_advantage(adv_name)(inputs, A.AdvantageParams(gamma=1.0, lam=1.0)).advantages
    before = seq_logprobs(logits, tokens, mask)
    loss, _ = A.get_policy_loss(loss_name)(before, before.detach(), adv, mask, A.PolicyLossParams())
    total = A.get_loss_aggregation(agg_name)(loss, mask, A.AggregationParams(norm_length=3))
    total.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    delta = (seq_logprobs(logits, tokens, mask) - before).sum(1)
    assert delta[0] > 0 > delta[1], delta
