"""Reward-model data drawn from the synthetic task (rlsys/data/preferences.py): every response
kind is what it claims (right, wrong, no format), wrong perceptions change the answer, pairs and
critiques round-trip through the dataset loader."""
import numpy as np
import pytest

from rlsys.data.datasets import load_prompts
from rlsys.data.preferences import (critique, critique_demonstrations, preference_pairs, response_of,
                                    write_demonstration_rows)
from rlsys.data.synthetic import write_synthetic_dataset
from rlsys.rewards import accuracy, r1_format
from rlsys.rewards.judge import DEFAULT_TEMPLATE, parse_score


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    train, _ = write_synthetic_dataset(tmp_path_factory.mktemp("syn"), 64, 8, seed=0, families=["majority_color"])
    return load_prompts(train).prompts


@pytest.mark.parametrize("kind, right, formatted", [
    ("look_right", 1.0, 1.0), ("guess_right", 1.0, 1.0), ("look_wrong", 0.0, 1.0), ("guess_wrong", 0.0, 1.0),
    ("malformed", 0.0, 0.0)])
def test_each_kind_is_what_it_claims(prompts, kind, right, formatted):
    rng = np.random.default_rng(0)
    answers = [p.answer for p in prompts]
    for p in prompts[:32]:
        response, given = response_of(kind, p, answers, rng)
        assert accuracy(response, p.answer, p.metadata) == right, (kind, response, p.answer)
        assert r1_format(response, p.answer, p.metadata) == formatted, (kind, response)
        assert (given == p.answer) == (right == 1.0) or kind == "malformed"


def test_a_wrong_perception_names_another_scene(prompts):
    rng = np.random.default_rng(1)
    right, _ = response_of("look_right", prompts[0], [], rng)
    wrong, given = response_of("look_wrong", prompts[0], ["red", "green", "blue"], rng)
    assert wrong.startswith("<think>") and "I will guess" not in wrong and given != prompts[0].answer
    assert wrong.split(".")[0] != right.split(".")[0]  # the counts it gives are not the image's


def test_pairs_prefer_right_to_wrong(prompts):
    pairs = preference_pairs(prompts, seed=0)
    assert len(pairs) == len(prompts)
    for pair in pairs:
        p = pair["prompt"]
        assert accuracy(pair["chosen"], p.answer, p.metadata) == 1.0
        assert accuracy(pair["rejected"], p.answer, p.metadata) == 0.0 or r1_format(pair["rejected"], None, {}) == 0.0
    kinds = {pair["rejected_kind"] for pair in pairs}
    assert kinds == {"look_wrong", "guess_wrong", "malformed"}
    assert {pair["chosen_kind"] for pair in pairs} == {"look_right", "guess_right"}


def test_critiques_score_right_10_and_wrong_0(prompts):
    p = prompts[0]
    text = critique(p, p.answer, True)
    assert text.endswith(f"The response answers {p.answer}: right.<score>10</score>")
    assert parse_score(text) == (10.0, "") and parse_score(critique(p, "", False)) == (0.0, "")
    assert "The response gives no answer: wrong." in critique(p, "", False)


def test_critique_demonstrations_round_trip_through_the_loader(prompts, tmp_path):
    demos = critique_demonstrations(prompts[:16], DEFAULT_TEMPLATE, seed=0)
    path = write_demonstration_rows(demos, tmp_path / "critiques.jsonl")
    loaded = load_prompts(path, demonstrations=True, system_prompt=None).prompts
    assert [d.response for d in loaded] == [d.response for d in demos]
    assert [d.messages for d in loaded] == [d.messages for d in demos]
    assert [m.sha256 for d in loaded for m in d.images] == [m.sha256 for d in demos for m in d.images]
    scores = [parse_score(d.response)[0] for d in demos]
    assert set(scores) == {0.0, 10.0}
