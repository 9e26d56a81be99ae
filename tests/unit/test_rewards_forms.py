"""Reward forms (rlsys/rewards/forms.py): detection from the signature, and each form scored
through the real RewardScorer (worker processes, deadlines, failure counting) on hand-computed
values; images decoded from MediaItems built by the real data loader."""
import json
import textwrap
import time

import pytest
from PIL import Image

from rlsys.data import load_prompts
from rlsys.protocol import Prompt, RewardInput, RewardResult, Rollout, RolloutGroup
from rlsys.rewards import RewardScorer, RewardSpecError, reward_form
from rlsys.rewards.forms import ACCEPTED, Form, build_inputs, decode_media

# ----------------------------------------------------------------------------- detection


def legacy(response, answer, metadata): ...
def legacy_renamed(r, a, m=None): ...
def legacy_star(*args): ...
def one_sample(sample): ...
def one_sample_opt(sample, scale=1.0): ...
def batch(samples): ...
def per_group(group): ...
def trl_min(completions, **kwargs): ...
def trl_named(prompts, completions, answer, level=0): ...
def trl_kwonly(*, completions, images): ...
def legacy_sample_named(sample, answer, metadata): ...  # three positionals: legacy, not `sample`


@pytest.mark.parametrize("fn, form", [
    (legacy, Form("legacy")), (legacy_renamed, Form("legacy")), (legacy_star, Form("legacy")),
    (lambda r, a, m: 0.0, Form("legacy")), (legacy_sample_named, Form("legacy")),
    (one_sample, Form("sample")), (one_sample_opt, Form("sample")), (batch, Form("samples")),
    (per_group, Form("group")),
    (trl_min, Form("trl", ("completions",), ("completions",), True)),
    (trl_named, Form("trl", ("prompts", "completions", "answer", "level"), ("prompts", "completions", "answer"))),
    (trl_kwonly, Form("trl", ("completions", "images"), ("completions", "images"))),
])
def test_form_is_read_from_the_signature(fn, form):
    assert reward_form(fn, "spec") == form


def bad_two(response, answer): ...
def bad_none(): ...
def bad_sample_extra(sample, other): ...
def bad_completion(completion, **kwargs): ...


@pytest.mark.parametrize("fn, shown", [
    (bad_two, "bad_two(response, answer)"), (bad_none, "bad_none()"),
    (bad_sample_extra, "bad_sample_extra(sample, other)"), (bad_completion, "bad_completion(completion, **kwargs)"),
])
def test_other_signatures_are_one_line_spec_errors(fn, shown):
    with pytest.raises(RewardSpecError) as err:
        reward_form(fn, "my/file.py:fn")
    assert str(err.value) == f"reward 'my/file.py:fn': cannot call {shown}: accepted signatures are {ACCEPTED}"
    assert "\n" not in str(err.value)


def test_scorer_refuses_a_bad_signature_at_construction(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def fn(a, b):\n    return 1.0\n")
    with pytest.raises(RewardSpecError, match=r"cannot call fn\(a, b\)"):
        RewardScorer([(f"{path}:fn", 1.0)])


# ----------------------------------------------------------------------------- scoring each form

USER_CODE = textwrap.dedent('''
    import time

    def ctx(sample):
        # 100 * index + 10 * group size + 1 if the response is group[index] and the prompt is seen
        seen = sample.prompt[-1]["content"].startswith("Q") and sample.group[sample.index] == sample.response
        return 100 * sample.index + 10 * len(sample.group) + float(seen) + float(sample.metadata.get("bonus", 0))

    def lengths(samples):
        return [len(s.response) for s in samples]

    def longest_in_group(group):
        best = max(len(s.response) for s in group)
        return [1.0 if len(s.response) == best else 0.0 for s in group]

    def accuracy_reward(completions, answer, **kwargs):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    def level_reward(completions, level, **kwargs):
        # TRL passes every dataset column as a list; None where a prompt lacks the column
        return [None if lv is None else float(lv) for lv in level]

    def needs_solution(completions, solution):
        return [1.0] * len(completions)

    def wrong_length(samples):
        return [1.0]

    def hang_group(group):
        if any("hang" in s.response for s in group):
            time.sleep(60)
        return [1.0] * len(group)

    def boom_sample(sample):
        if "boom" in sample.response:
            raise RuntimeError("user bug")
        return 1.0
''')


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("forms") / "form_rewards.py"
    path.write_text(USER_CODE)
    return str(path)


def make_group(texts, uid="t:0", answer="4", metadata=None, question="Q: 2+2?"):
    prompt = Prompt(uid=uid, messages=[{"role": "user", "content": question}], answer=answer,
                    metadata=metadata or {})
    return RolloutGroup(prompt, [Rollout([1], [2], t, [0.0], "stop", 0) for t in texts])


def test_each_form_on_a_batch_of_two_groups(user_file):
    comps = [(f"{user_file}:ctx", 1.0, {"name": "ctx"}), (f"{user_file}:lengths", 1.0, {"name": "len"}),
             (f"{user_file}:longest_in_group", 1.0, {"name": "longest"}),
             (f"{user_file}:accuracy_reward", 1.0, {"name": "acc"}), ("accuracy", 1.0)]
    a = make_group([" 4 ", "44", "5"], uid="a", metadata={"bonus": 2})
    b = make_group(["x", "4"], uid="b", answer="x")
    with RewardScorer(comps, timeout_s=10, max_workers=2) as scorer:
        assert scorer.forms() == {"ctx": "sample", "len": "samples", "longest": "group", "acc": "trl",
                                  "accuracy": "legacy"}
        ra, rb = scorer.score_groups([a, b])
    # ctx: 100*i + 10*G + 1 (+ bonus 2 in group a)
    assert ra.components["ctx"] == [33.0, 133.0, 233.0] and rb.components["ctx"] == [21.0, 121.0]
    assert ra.components["len"] == [3.0, 2.0, 1.0] and rb.components["len"] == [1.0, 1.0]
    # longest per group: " 4 " (3 chars) in a; both 1 char in b
    assert ra.components["longest"] == [1.0, 0.0, 0.0] and rb.components["longest"] == [1.0, 1.0]
    # the TRL docs' accuracy_reward, unchanged: strip() == answer
    assert ra.components["acc"] == [1.0, 0.0, 0.0] and rb.components["acc"] == [1.0, 0.0]
    assert ra.rewards == [33 + 3 + 1 + 1 + 0.0, 133 + 2 + 0 + 0 + 0.0, 233 + 1 + 0 + 0 + 0.0]
    assert ra.failures == rb.failures == 0 and scorer.calls == 5 * 5


def test_trl_columns_none_entries_and_missing_columns(user_file):
    comps = [(f"{user_file}:level_reward", 1.0, {"name": "level"}),
             (f"{user_file}:needs_solution", 1.0, {"name": "sol"})]
    with RewardScorer(comps, timeout_s=10, max_workers=1) as scorer:
        ra, rb = scorer.score_groups([make_group(["p", "q"], uid="a", metadata={"level": 3}),
                                      make_group(["r"], uid="b")])
    assert ra.components["level"] == [3.0, 3.0] and rb.components["level"] == [0.0]
    assert rb.first_failure["level"] == RewardResult.Failure("reward returned None for this sample", "b", 0)
    # A required column the prompts lack fails every sample of the call, saying which column.
    assert ra.component_failures["sol"] == 2 and rb.component_failures["sol"] == 1
    assert ra.first_failure["sol"].error.startswith("TypeError: reward needs 'solution', which the prompts do not have")
    assert scorer.failures == 1 + 3


def test_list_form_of_the_wrong_length_fails_every_sample(user_file):
    with RewardScorer([(f"{user_file}:wrong_length", 1.0, {"name": "w"})], timeout_s=10, max_workers=1) as scorer:
        result = scorer.score_group(make_group(["a", "b", "c"]))
    assert result.rewards == [0.0] * 3 and result.failures == 3
    assert result.first_failure["w"].error == "ValueError: reward returned 1 values for 3 samples"


def test_group_call_that_hangs_costs_one_deadline_and_spares_other_groups(user_file):
    timeout = 1.0
    with RewardScorer([(f"{user_file}:hang_group", 1.0, {"name": "h"})], timeout_s=timeout, max_workers=2) as scorer:
        scorer.score_group(make_group(["ok"]))  # workers up: start-up is not charged to a batch
        start = time.monotonic()
        ra, rb = scorer.score_groups([make_group(["ok", "hang"], uid="a"), make_group(["ok", "ok"], uid="b")])
        assert (time.monotonic() - start) / timeout < 4
        assert ra.rewards == [0.0, 0.0] and rb.rewards == [1.0, 1.0]
        assert ra.first_failure["h"] == RewardResult.Failure(
            "timed out: still running at the 1s batch deadline", "a", 0)
        assert scorer.failures == 2 and scorer.timeouts == 2 and scorer.worker_restarts == 1


def test_per_sample_context_failures_stay_per_sample(user_file):
    with RewardScorer([(f"{user_file}:boom_sample", 1.0, {"name": "b"})], timeout_s=10, max_workers=2) as scorer:
        result = scorer.score_group(make_group(["ok", "boom", "ok"]))
    assert result.rewards == [1.0, 0.0, 1.0] and result.failures == 1
    assert result.first_failure["b"] == RewardResult.Failure("RuntimeError: user bug", "t:0", 1)


def test_unpicklable_context_reward_runs_inline():
    seen = []

    def closure(group):  # a closure cannot reach a worker: it runs in this process
        seen.append([s.index for s in group])
        return [float(s.index) for s in group]

    scorer = RewardScorer([(closure, 1.0)])
    ra, rb = scorer.score_groups([make_group(["a", "b"]), make_group(["c"])])
    assert ra.rewards == [0.0, 1.0] and rb.rewards == [0.0] and seen == [[0, 1], [0]]


# ----------------------------------------------------------------------------- images

IMAGE_REWARD = textwrap.dedent('''
    COLOURS = {(255, 0, 0): "red", (0, 0, 255): "blue"}

    def colour_of_pixel(sample):
        img = sample.images[0]
        name = COLOURS.get(img.getpixel((0, 0)))
        img.putpixel((0, 0), (0, 255, 0))  # drawing on it must not change what other samples see
        return 1.0 if name == sample.answer else 0.0

    def image_sizes(completions, images, **kwargs):
        return [float(imgs[0].width * 1000 + imgs[0].height) for imgs in images]
''')


@pytest.fixture(scope="module")
def image_prompts(tmp_path_factory):
    """Two prompts as the data loader builds them: a red and a blue 56x56 PNG file (56x56 is
    within the default pixel budget, so the loader keeps the pixels), both answered "red"."""
    d = tmp_path_factory.mktemp("image_data")
    Image.new("RGB", (56, 56), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (84, 56), (0, 0, 255)).save(d / "blue.png")
    rows = [{"id": "r", "prompt": "Which colour?", "images": ["red.png"], "answer": "red"},
            {"id": "b", "prompt": "Which colour?", "images": ["blue.png"], "answer": "red"}]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(d / "rows.jsonl").prompts
    assert [len(p.images) for p in prompts] == [1, 1] and all(p.images[0].png for p in prompts)
    return prompts, d


def test_image_reward_gets_the_decoded_image(image_prompts):
    prompts, d = image_prompts
    (d / "image_rewards.py").write_text(IMAGE_REWARD)
    comps = [(f"{d / 'image_rewards.py'}:colour_of_pixel", 1.0, {"name": "colour"}),
             (f"{d / 'image_rewards.py'}:image_sizes", 1.0, {"name": "size"})]
    groups = [RolloutGroup(p, [Rollout([1], [2], t, [0.0], "stop", 0) for t in ("x", "y", "z")]) for p in prompts]
    with RewardScorer(comps, timeout_s=20, max_workers=2) as scorer:
        red, blue = scorer.score_groups(groups)
    # every sample of the red prompt sees red at (0, 0), though each one painted its copy green
    assert red.components["colour"] == [1.0, 1.0, 1.0] and blue.components["colour"] == [0.0, 0.0, 0.0]
    assert red.components["size"] == [56056.0] * 3 and blue.components["size"] == [84056.0] * 3
    assert red.failures == blue.failures == 0


def test_images_decode_lazily_once_per_process_and_never_travel_decoded(image_prompts):
    import pickle

    from rlsys.rewards import forms

    prompts, _ = image_prompts
    group = RolloutGroup(prompts[1], [Rollout([], [], t, [], "stop", 0) for t in ("a", "b")])
    [inputs] = build_inputs([group])
    assert all(x._images is None for x in inputs)  # nothing decoded until a reward asks
    before = forms._decoded.decoded
    first, second = inputs[0].images[0], inputs[1].images[0]
    assert first.getpixel((0, 0)) == second.getpixel((0, 0)) == (0, 0, 255) and first is not second
    new_decodes = forms._decoded.decoded - before
    assert new_decodes <= 1  # 0 when an earlier test decoded this image in this process
    assert inputs[0].images[0] is first  # cached on the RewardInput
    clone = pickle.loads(pickle.dumps(inputs[0]))
    assert clone._images is None and clone.media[0].sha256 == inputs[0].media[0].sha256
    assert clone.decoder is decode_media and clone.images[0].size == (84, 56)


def test_reward_input_without_decoder_uses_media_items():
    img = Image.new("RGB", (28, 28), (1, 2, 3))
    from rlsys.data.media import to_media_item

    item = to_media_item(img, min_pixels=28 * 28)
    x = RewardInput(prompt=[], response="r", group=["r"], index=0, media=[item])
    assert x.images[0].getpixel((5, 5)) == (1, 2, 3)
