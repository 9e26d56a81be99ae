"""The generative judge on the real tiny model served by vLLM (rlsys/rewards/judge_model.py).

One engine for the module (engine start is the slow part on CPU). The untrained tiny model
writes garbage, so it shows the failure path; a judge that writes scores is the same checkpoint
fine-tuned for a few seconds on judge prompts (the demonstration path a judge SFT uses), its
weights loaded into the same engine.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

pytestmark = pytest.mark.integration

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

G = 3
FALLBACK = -1.0
MAX_MODEL_LEN = 320


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from rlsys.data.datasets import load_prompts
    from rlsys.data.synthetic import write_synthetic_dataset
    from rlsys.data.templates import R1_SYSTEM_PROMPT

    train, _ = write_synthetic_dataset(tmp_path_factory.mktemp("judge-data"), 24, 4, seed=0,
                                       families=["count_color"])
    return load_prompts(train, system_prompt=R1_SYSTEM_PROMPT).prompts


def _groups(prompts, responses=None):
    from rlsys.protocol import Rollout, RolloutGroup

    out = []
    for p in prompts:
        texts = responses or [f"<think>I see {k}.</think><answer>{k}</answer>" for k in range(G)]
        out.append(RolloutGroup(p, [Rollout([1], [2], t, [0.0], "stop", 0) for t in texts]))
    return out


@pytest.fixture(scope="module")
def actor(tiny_model_dir):
    """The judge actor class without Ray (its prompts hold image bytes, so nothing is fetched)."""
    from actors.judge import JudgeActor
    from rlsys.rewards.judge import DEFAULT_TEMPLATE
    from rlsys.specs import EngineSpec, JudgeSpec

    engine = EngineSpec(str(tiny_model_dir), dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0,
                        kv_cache_space_gib=1.0)
    judge = JudgeActor(JudgeSpec(engine, DEFAULT_TEMPLATE, samples=1, temperature=0.0, max_new_tokens=16,
                                 fallback=FALLBACK, seed=0))
    yield judge
    judge.model.shutdown()


@pytest.fixture(scope="module")
def judge(actor):
    return actor.model


def _load(engine, model) -> None:
    """`model`'s weights into the judge's engine, whole fused layers per bucket (the object-store
    sync's engine side)."""
    from rlsys.distributed.weight_sync import bucketize

    for bucket in bucketize([(n, p.detach()) for n, p in model.named_parameters()], 1.0):
        engine.load_bucket(bucket)


def test_length_precheck_counts_what_the_engine_sees(judge, prompts):
    from rlsys.models.forward import prompt_token_ids

    for p in [jp for ps in judge.judge_prompts(_groups(prompts[:2])) for jp in ps]:
        assert judge._prompt_length(p) == len(prompt_token_ids(judge.engine.processor, p)), p.uid


def test_untrained_judge_falls_back_and_counts_every_sample(judge, prompts):
    from rlsys.rewards.judge import parse_score

    groups = _groups(prompts[:4])
    results = judge.score_groups(groups)
    assert len(results) == len(groups)
    for g, res in zip(groups, results):
        assert len(res.texts) == G and all(isinstance(t, str) and t for t in res.texts)
        assert all(parse_score(t)[0] is None for t in res.texts), res.texts  # garbled: no score
        assert res.scores == [FALLBACK] * G and res.failures == G
        assert res.first_failure.uid == g.prompt.uid and res.first_failure.index == 0
        assert res.first_failure.error == parse_score(res.texts[0])[1]
    assert sum(r.failures for r in results) == G * len(groups)


def test_actor_scores_like_its_model_and_logs_calls(actor, prompts):
    groups = _groups(prompts[11:13])
    n = len(actor.call_log())
    results = actor.score(groups)
    assert results == actor.model.score_groups(groups)
    assert [g.prompt for g in groups] == prompts[11:13] and groups[0].prompt is prompts[11]
    log = actor.call_log()
    assert len(log) == n + 1 and log[-1][0] <= log[-1][1]
    assert actor.peak_memory_mb().host_mb > 0


def test_too_long_judge_prompt_fails_only_its_sample(judge, prompts):
    from rlsys.rewards.judge import judge_prompt

    normal = _groups(prompts[4:6])
    before = judge.score_groups(normal)
    long_group = _groups(prompts[6:7], ["2", "blue " * 400, "3"])[0]
    results = judge.score_groups([normal[0], long_group, normal[1]])
    assert [r.texts for r in (results[0], results[2])] == [b.texts for b in before]  # greedy: same
    bad = results[1]
    assert bad.texts[1] == "" and bad.texts[0] and bad.texts[2]
    assert bad.scores[1] == FALLBACK and bad.failures == G  # the other two are garbled, counted too
    long_prompt = judge_prompt(judge.spec.template, long_group.prompt, "blue " * 400)
    assert long_prompt.uid == f"{long_group.prompt.uid}#judge"
    why = judge._problem(long_prompt)
    assert why.startswith("judge prompt is ") and f"max_model_len {MAX_MODEL_LEN}" in why


def test_sampled_judgements_are_reproducible_per_response(judge, prompts):
    spec = judge.spec
    judge.spec = dataclasses.replace(spec, samples=2, temperature=1.0, seed=5)
    try:
        groups = _groups(prompts[8:11])
        first = judge.score_groups(groups)
        again = judge.score_groups(list(reversed(groups)))[::-1]  # other batch order, same seeds
        assert [r.texts for r in first] == [r.texts for r in again]
        assert all(len(r.texts) == G and len(r.scores) == G for r in first)
        judge.spec = dataclasses.replace(judge.spec, seed=6)
        other = judge.score_groups(groups)
        assert [r.texts for r in other] != [r.texts for r in first]
    finally:
        judge.spec = spec


def test_a_judge_that_writes_scores_is_parsed_end_to_end(judge, prompts, tiny_model_dir, tmp_path):
    from rlsys.models.warmstart import load_model, sft_warm_start
    from rlsys.rewards.judge import check_template, judge_prompt, load_template

    template_file = tmp_path / "judge.txt"
    template_file.write_text("Question: {question}\nResponse: {response}\nCritique, then <score></score>.")
    assert check_template(str(template_file)) is None
    template = load_template(str(template_file))
    demos = [judge_prompt(template, g.prompt, r.response_text, index=k)
             for g in _groups(prompts[:16]) for k, r in enumerate(g.rollouts)]
    sft_warm_start(tiny_model_dir, demos, tmp_path / "judge", steps=40, lr=3e-3, batch_size=8,
                   system_prompt=None, demonstrate=lambda p: "Fine. <score>7</score>")
    spec = judge.spec
    _load(judge.engine, load_model(tmp_path / "judge")[0])
    judge.spec = dataclasses.replace(spec, template=template, samples=2, temperature=0.5, max_new_tokens=32)
    try:
        groups = _groups(prompts[16:20])
        results = judge.score_groups(groups)
        for res in results:
            assert res.failures == 0 and res.first_failure is None, res.texts
            assert res.scores == [7.0] * G and all("<score>7</score>" in t for t in res.texts)
    finally:
        judge.spec = spec
        _load(judge.engine, load_model(tiny_model_dir)[0])
