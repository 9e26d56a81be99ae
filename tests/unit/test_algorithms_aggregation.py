"""Loss aggregations: hand values, global counts across micro-batches, masks."""
import pytest
import torch

from rlsys.algorithms import LOSS_AGGREGATIONS, AggregationParams, get_loss_aggregation

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
NAN, INF = float("nan"), float("inf")

# rows: [1, 2, 3] all valid; [4, nan, inf] first valid; [100, 100, 100] none valid
LOSS = T([[1.0, 2.0, 3.0], [4.0, NAN, INF], [100.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)

# name -> list of (params, expected)
HAND_CASES = {
    "token_mean": [
        (AggregationParams(), 2.5),  # (1+2+3+4) / 4
        (AggregationParams(global_token_count=8), 1.25),  # 10 / 8
    ],
    "seq_mean_token_mean": [
        (AggregationParams(), 3.0),  # (2 + 4) / 2, the empty row left out
        (AggregationParams(global_seq_count=4), 1.5),  # 6 / 4
    ],
    "seq_mean_token_sum_norm": [
        (AggregationParams(norm_length=4), 1.25),  # (6/4 + 4/4) / 2
        (AggregationParams(), 5 / 3),  # norm_length defaults to R = 3: (2 + 4/3) / 2
        (AggregationParams(norm_length=4, global_seq_count=4), 0.625),  # 2.5 / 4
    ],
}


def test_every_aggregation_has_a_hand_case():
    assert set(HAND_CASES) == set(LOSS_AGGREGATIONS), "add a hand-computed case for each"


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_computed(name):
    for params, want in HAND_CASES[name]:
        out = get_loss_aggregation(name)(LOSS, MASK, params)
        assert out.dim() == 0 and out.item() == pytest.approx(want)


def naive(name, loss, mask, norm_length):
    rows = [[x for x, m in zip(lr, mr) if m] for lr, mr in zip(loss, mask)]
    rows = [r for r in rows if r]
    if name == "token_mean":
        return sum(map(sum, rows)) / max(1, sum(map(len, rows)))
    per_seq = [sum(r) / (len(r) if name == "seq_mean_token_mean" else norm_length) for r in rows]
    return sum(per_seq) / max(1, len(per_seq))


def random_batch(seed, n=12, r=10):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, r, generator=g) < 0.6
    mask[3] = False
    return torch.randn(n, r, generator=g, dtype=torch.float64), mask


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("seed", range(3))
def test_vectorised_matches_naive_loop(name, seed):
    loss, mask = random_batch(seed)
    got = get_loss_aggregation(name)(loss, mask, AggregationParams(norm_length=16))
    assert got.item() == pytest.approx(naive(name, loss.tolist(), mask.tolist(), 16))


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_micro_batches_with_global_counts_sum_to_full_batch(name):
    loss, mask = random_batch(5)
    full = get_loss_aggregation(name)(loss, mask, AggregationParams(norm_length=16))
    params = AggregationParams(norm_length=16, global_token_count=mask.sum(),
                               global_seq_count=(mask.sum(1) > 0).sum())
    # uneven micro-batches, e.g. two ranks x two accumulation steps
    parts = [get_loss_aggregation(name)(loss[a:b], mask[a:b], params)
             for a, b in [(0, 2), (2, 7), (7, 8), (8, 12)]]
    torch.testing.assert_close(sum(parts), full)


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_masked_positions_do_not_matter(name):
    loss, mask = random_batch(9)
    clean = torch.where(mask, loss, 0.0).requires_grad_()
    dirty = torch.where(mask, loss, NAN).requires_grad_()
    a = get_loss_aggregation(name)(clean, mask, AggregationParams())
    b = get_loss_aggregation(name)(dirty, mask, AggregationParams())
    a.backward()
    b.backward()
    assert torch.equal(a, b) and torch.equal(clean.grad, dirty.grad)


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_empty_mask_gives_zero_not_nan(name):
    loss = torch.ones(2, 3, requires_grad=True)
    out = get_loss_aggregation(name)(loss, torch.zeros(2, 3, dtype=torch.bool), AggregationParams())
    out.backward()
    assert out.item() == 0.0 and (loss.grad == 0).all()
