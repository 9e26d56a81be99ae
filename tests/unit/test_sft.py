"""`rlsys sft` compute code without Ray: the SFT loss (response tokens only), demonstration rows
in the data pipeline, encoding a demonstration with the tiny model's processor, the step plan
and the learner spec."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from rlsys.config import load_config
from rlsys.data import DataError, load_prompts
from rlsys.models.forward import collate, token_logprobs
from rlsys.protocol import TrainSample
from rlsys.sft import encode_demonstration, sft_nll_loss, step_plan
from rlsys.specs import sft_learner_spec

ROOT = Path(__file__).resolve().parents[2]


# ---- the loss ------------------------------------------------------------------------------

class _TableLM(torch.nn.Module):
    """Logits at a position depend only on the token there: row `input_ids[t]` of `table`."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=None):
        logits = self.table[input_ids]
        if logits_to_keep is not None:
            logits = logits[:, logits_to_keep]
        return type("Out", (), {"logits": logits})()


class _TextOnly:
    """A processor stand-in: no image tokens, nothing suppressed."""


def _sample(ids, start):
    r = len(ids) - start
    return TrainSample(torch.tensor(ids), start, [], torch.zeros(r), torch.zeros(r))


def test_sft_loss_is_the_mean_nll_of_response_tokens_only():
    # Vocabulary {0, 1, 2}. After token 0 the model says p = (1/2, 1/4, 1/4); after token 1,
    # (1/4, 1/2, 1/4); after token 2, uniform (1/3 each).
    ln = math.log
    table = [[ln(2), 0.0, 0.0], [0.0, ln(2), 0.0], [0.0, 0.0, 0.0]]
    model = _TableLM(table)
    # Sample a: prompt [2, 0 | response 1, 1] -> p(1 | 0) = 1/4, p(1 | 1) = 1/2.
    # Sample b: prompt [1 | response 0]       -> p(0 | 1) = 1/4; then padding (masked).
    # The prompt tokens (p(0 | 2) = 1/3 in a) and the padding never count.
    batch = collate([_sample([2, 0, 1, 1], 2), _sample([1, 0], 1)], _TextOnly(), pad_token_id=2)
    lp, _, mask = token_logprobs(model, batch)
    assert mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    expected = (ln(4) + ln(2) + ln(4)) / 3  # hand-computed: 3 response tokens
    loss = sft_nll_loss(lp, mask)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # With a global token count (other micro-batches / ranks) the value is this share of the sum.
    assert sft_nll_loss(lp, mask, num_tokens=6).item() == pytest.approx(expected * 3 / 6, abs=1e-6)
    # Differentiable; masked positions get no gradient signal (a padded slot's value is ignored).
    loss.backward()
    assert model.table.grad is not None and torch.isfinite(model.table.grad).all()
    lp2 = lp.detach().clone()
    lp2[1, 1] = -1e9  # padding
    assert sft_nll_loss(lp2, mask).item() == pytest.approx(expected, abs=1e-6)


def test_sft_loss_without_tokens_is_zero_not_nan():
    assert sft_nll_loss(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


# ---- demonstration rows --------------------------------------------------------------------

def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(tmp_path, rows, name="demos"):
    (tmp_path / "img.png").write_bytes(_png())
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RESPONSE = "<think>one red square</think><answer>1</answer>"
ROW = {"prompt": "How many red shapes?", "images": ["img.png"], "answer": "1", "response": RESPONSE}
CHAT = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
                     {"role": "assistant", "content": RESPONSE}], "images": ["img.png"]}


def test_response_column_and_final_assistant_turn_become_the_target(tmp_path):
    parts = dict(CHAT, messages=[CHAT["messages"][0], {"role": "assistant", "content": [
        {"type": "text", "text": "<think>one</think>"}, {"type": "text", "text": "<answer>1</answer>"}]}])
    path = _jsonl(tmp_path, [ROW, CHAT, parts])
    got = load_prompts(path, demonstrations=True, system_prompt="SYS").prompts
    assert [p.response for p in got] == [RESPONSE, RESPONSE, "<think>one</think><answer>1</answer>"]
    for p in got:
        # The target left the prompt: system + user turns only, the image in the user turn.
        assert [m["role"] for m in p.messages] == ["system", "user"]
        assert len(p.images) == 1 and "response" not in p.metadata
    # RL loading is unchanged: no target, the extra column still reaches rewards via metadata.
    rl = load_prompts(path, system_prompt="SYS").prompts
    assert rl[0].response is None and rl[0].metadata["response"] == RESPONSE
    assert [m["role"] for m in rl[1].messages] == ["system", "user", "assistant"]


def test_parquet_response_column(tmp_path):
    path = tmp_path / "demos.parquet"
    pq.write_table(pa.table({"prompt": ["What is 1+1?", "And 2+2?"], "response": ["2", "4"]}), path)
    assert [p.response for p in load_prompts(path, demonstrations=True).prompts] == ["2", "4"]


@pytest.mark.parametrize("bad, field, reason", [
    ({"prompt": "no target"}, "response", "no target response"),
    ({"prompt": "q", "response": "   "}, "response", "empty response"),
    ({"prompt": "q", "response": 3}, "response", "expected a string"),
    (dict(CHAT, response="x"), "response", "both a 'response' column and a final assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image"}]}],
      "images": ["img.png"]}, "messages[1].content", "an image in the demonstrated assistant turn"),
    ({"messages": [{"role": "assistant", "content": "only a reply"}]}, "messages", "empty prompt"),
])
def test_a_row_without_a_usable_target_names_file_line_and_field(tmp_path, bad, field, reason):
    path = _jsonl(tmp_path, [ROW, bad, ROW])
    with pytest.raises(DataError) as err:
        load_prompts(path, demonstrations=True)
    assert err.value.source == str(path) and err.value.line == 2 and err.value.field == field
    assert str(err.value).startswith(f"{path}: line 2: {field}: ") and reason in err.value.reason
    skipped = load_prompts(path, demonstrations=True, on_bad_row="skip")
    assert (len(skipped.prompts), skipped.skip_count, skipped.skipped[0].line) == (2, 1, 2)


# ---- encoding, plan, spec --------------------------------------------------------------------

def test_encode_demonstration_appends_response_and_eos_after_the_engine_prompt(tiny_model_dir, tmp_path):
    from rlsys.models.forward import prompt_token_ids
    from rlsys.models.loading import load_processor

    proc = load_processor(tiny_model_dir)
    (prompt,) = load_prompts(_jsonl(tmp_path, [ROW]), demonstrations=True, system_prompt="SYS").prompts
    s = encode_demonstration(proc, prompt)
    ids = prompt_token_ids(proc, prompt)  # exactly what the rollout engine is given
    assert s.input_ids[:s.response_start].tolist() == ids and s.images == prompt.images
    resp = s.input_ids[s.response_start:].tolist()
    assert resp[-1] == proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.eos_token)
    assert proc.tokenizer.decode(resp, skip_special_tokens=True) == RESPONSE
    assert s.old_logprobs.shape == s.advantages.shape == (len(resp),)
    # Through the learner's collate: image tokens and pixels line up (the same processor path).
    batch = collate([s], proc, proc.tokenizer.pad_token_id)
    assert batch["response_mask"].sum() == len(resp) and "pixel_values" in batch


def test_step_plan_epochs_shuffle_and_max_steps():
    plan = step_plan(10, 4, epochs=2, max_steps=None, seed=0)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(i for b in plan[:3] for i in b) == list(range(10)) == sorted(i for b in plan[3:] for i in b)
    assert plan == step_plan(10, 4, 2, None, seed=0) and plan != step_plan(10, 4, 2, None, seed=1)
    assert step_plan(10, 4, 1, None, 0, shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(step_plan(10, 4, 5, max_steps=7, seed=0)) == 7
    assert [len(b) for b in step_plan(10, 4, 1, None, 0, min_batch=3)] == [4, 4]  # a 2-row tail cannot feed 3 ranks


def test_sft_learner_spec_takes_the_sft_section_and_the_learner_group_settings():
    cfg = load_config(None, ["sft.lr=3e-5", "sft.warmup_steps=4", "learner.zero_stage=3", "learner.micro_batch_size=2",
                             "learner.ppo_epochs=3", "learner.mini_batches=2", "learner.lr_schedule=cosine",
                             "algorithm.loss_agg=seq_mean_token_sum_norm", "learner.grad_clip=0.5"])
    spec = sft_learner_spec(cfg, "/m", total_steps=12)
    t = spec.trainer
    assert (t.model_path, t.lr, t.warmup_steps, t.total_steps, t.zero_stage, t.micro_batch_size) == (
        "/m", 3e-5, 4, 12, 3, 2)
    assert (t.ppo_epochs, t.mini_batches, t.lr_schedule, t.loss_agg, t.grad_clip) == (1, 1, "constant", "token_mean", 0.5)
    assert spec.temperature == 1.0 and spec.kl_coef == 0.0


def test_sft_config_fields_are_validated():
    from rlsys.config import ConfigError

    with pytest.raises(ConfigError, match=r"sft\.batch_size = 0"):
        load_config(None, ["sft.batch_size=0"])
    with pytest.raises(ConfigError, match=r"sft\.lr"):
        load_config(None, ["sft.lr=0"])
