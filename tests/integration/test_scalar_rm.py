"""The scalar multimodal reward model (rlsys/rewards/scalar_rm.py) and `rlsys train-rm`, on the
real tiny VLM, CPU.

What is proved here: the RM's collated images are the learner's, bit for bit, and with the
policy's tokenizer its sequences are the engine's; `rlsys train-rm` (Ray, DeepSpeed, gloo) on
pairs of the synthetic task writes an RM directory that the scorer reloads, reports held-out
pair accuracy, and after training scores chosen above rejected on most training pairs, also
through the actor with object-store images; an over-long sequence fails, counted, and scores 0
without touching its neighbours; a HF sequence-classification checkpoint loads and scores the
text of a multimodal prompt as HF's own forward does.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration



def _wrong(chosen: str, answer: str) -> str:
    """The chosen response with another final answer (its reasoning no longer supports it)."""
    return chosen.replace(f"<answer>{answer}</answer>", f"<answer>{int(answer) + 3}</answer>")


def _rows(n: int, seed: int = 5) -> list[dict]:
    from rlsys.data.synthetic import generate_task_rows

    return generate_task_rows("count_color", n, seed=seed)


def write_pairs(folder: Path, n: int) -> Path:
    """JSONL pairs of the count_color task: chosen = the perception demonstration, rejected = the
    same with a wrong answer; images as files beside it."""
    from rlsys.models.warmstart import perception_demonstration

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(_rows(n)):
        (folder / f"img{i}.png").write_bytes(row["images"][0])
        lines.append({"id": row["id"], "prompt": row["prompt"], "images": [f"img{i}.png"], "answer": row["answer"],
                      "metadata": row["metadata"], "chosen": perception_demonstration(row),
                      "rejected": _wrong(perception_demonstration(row), row["answer"])})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _groups(processor, prompts, responses_of):
    """RolloutGroups as the engine would emit them: prompt ids rendered by `processor`, response
    ids = the text's ids + EOS."""
    from rlsys.models.forward import prompt_token_ids
    from rlsys.protocol import Rollout, RolloutGroup

    tok = processor.tokenizer
    out = []
    for p in prompts:
        ids = prompt_token_ids(processor, p)
        rollouts = [Rollout(ids, tok(r + tok.eos_token, add_special_tokens=False)["input_ids"], r, [], "stop", 0)
                    for r in responses_of(p)]
        out.append(RolloutGroup(p, rollouts))
    return out


def _untrained_rm(model_dir: Path, out: Path) -> Path:
    """An rlsys-format RM directory with a random head over the tiny model (no training)."""
    from rlsys.critic import save_value_head
    from rlsys.rewards.scalar_rm import RM_FORMAT, RM_INFO_FILE, RM_VERSION

    shutil.copytree(model_dir, out)
    g = torch.Generator().manual_seed(0)
    save_value_head(torch.randn(1, 64, generator=g), torch.zeros(1), out)
    (out / RM_INFO_FILE).write_text(json.dumps({"format": RM_FORMAT, "version": RM_VERSION, "base": str(model_dir)}))
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from rlsys.data import R1_SYSTEM_PROMPT, load_prompts

    path = write_pairs(tmp_path_factory.mktemp("pairs"), 4)
    return [p.prompt for p in load_prompts(path, pairs=True, system_prompt=R1_SYSTEM_PROMPT).pairs]


def test_rm_images_are_the_learners_and_sequences_the_engines(tiny_model_dir, tmp_path, prompts):
    from rlsys.distributed.clients import scoring_samples
    from rlsys.models.forward import collate
    from rlsys.models.loading import load_processor, pad_token_id
    from rlsys.rewards.scalar_rm import ScalarRewardModel
    from rlsys.specs import ScalarRMSpec

    rm = ScalarRewardModel(ScalarRMSpec(str(_untrained_rm(tiny_model_dir, tmp_path / "rm")), batch_size=3))
    assert rm.kind == "rlsys" and rm.multimodal
    proc = load_processor(tiny_model_dir)
    groups = _groups(proc, prompts, lambda p: ["<answer>1</answer>", "<think>two</think><answer>2</answer>"])
    learner = collate(scoring_samples(groups), proc, pad_token_id(proc))
    mine = rm.rm_batch(groups)
    assert mine["pixel_values"].shape[0] > 0
    assert torch.equal(mine["pixel_values"], learner["pixel_values"])
    assert torch.equal(mine["image_grid_thw"], learner["image_grid_thw"])
    assert torch.equal(mine["input_ids"], learner["input_ids"])  # same tokenizer: the engine's sequences
    scores = rm.score_groups(groups)
    assert [len(s.scores) for s in scores] == [2] * len(groups) and all(s.failures == 0 for s in scores)
    # batch_size only splits the work: one sequence per forward scores the same.
    one = ScalarRewardModel(ScalarRMSpec(str(tmp_path / "rm"), batch_size=1)).score_groups(groups)
    assert torch.allclose(torch.tensor([s.scores for s in one]), torch.tensor([s.scores for s in scores]), atol=1e-5)


def test_over_long_sequence_fails_counted_and_scores_zero(tiny_model_dir, tmp_path, prompts):
    from rlsys.models.loading import load_processor
    from rlsys.rewards.scalar_rm import ScalarRewardModel
    from rlsys.specs import ScalarRMSpec

    path = str(_untrained_rm(tiny_model_dir, tmp_path / "rm"))
    proc = load_processor(tiny_model_dir)
    groups = _groups(proc, prompts[:1], lambda p: ["<answer>1</answer>", "long " * 300, "<answer>2</answer>"])
    prompt_len = len(groups[0].rollouts[0].prompt_token_ids)
    full = ScalarRewardModel(ScalarRMSpec(path)).score_groups(groups)[0]
    (res,) = ScalarRewardModel(ScalarRMSpec(path, max_length=prompt_len + 40)).score_groups(groups)
    assert res.failures == 1 and res.scores[1] == 0.0
    assert res.first_failure.uid == prompts[0].uid and res.first_failure.index == 1
    assert "over max_length" in res.first_failure.error
    assert full.failures == 0 and full.scores[1] != 0.0
    assert res.scores[0] == pytest.approx(full.scores[0], abs=1e-5) and res.scores[2] == pytest.approx(full.scores[2], abs=1e-5)


def test_sequence_classification_checkpoint_scores_the_text(tiny_model_dir, tmp_path, prompts):
    from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    from rlsys.rewards.scalar_rm import ScalarRewardModel, text_only
    from rlsys.sft import encode_response
    from rlsys.specs import ScalarRMSpec

    text = AutoConfig.from_pretrained(tiny_model_dir).text_config.to_dict()
    keep = {k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                 "rms_norm_eps", "eos_token_id", "bos_token_id")}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(Qwen2Config(**keep, num_labels=1, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "seqcls")
    tok.save_pretrained(tmp_path / "seqcls")

    rm = ScalarRewardModel(ScalarRMSpec(str(tmp_path / "seqcls")))
    assert rm.kind == "sequence_classification" and not rm.multimodal
    groups = [g for g in _groups_text(tok, prompts[:2])]
    scores = rm.score_groups(groups)
    assert all(s.failures == 0 and len(s.scores) == 2 for s in scores)
    # The multimodal prompt is scored on its text: HF's own pooled logit of the text-only sequence.
    sample = encode_response(tok, text_only(prompts[0]), "<answer>3</answer>")
    with torch.no_grad():
        ref = float(model.eval()(input_ids=sample.input_ids[None]).logits[0, 0])
    assert scores[0].scores[0] == pytest.approx(ref, abs=1e-4)


def _groups_text(tok, prompts):
    from rlsys.protocol import Rollout, RolloutGroup

    return [RolloutGroup(p, [Rollout([1], [2], r, [], "stop", 0) for r in ("<answer>3</answer>", "<answer>1</answer>")])
            for p in prompts]


def test_train_rm_cli_learns_pairs_and_writes_a_loadable_rm(tiny_model_dir, tmp_path, ray_cluster, capsys):
    from actors.reward_model import ScalarRMActor
    from launch.cli import main
    from rlsys.data import R1_SYSTEM_PROMPT, load_prompts
    from rlsys.distributed.media_store import MediaStore
    from rlsys.protocol import Rollout, RolloutGroup
    from rlsys.rewards.scalar_rm import RM_INFO_FILE, ScalarRewardModel
    from rlsys.specs import ScalarRMSpec

    data = write_pairs(tmp_path / "data", 32)
    out = tmp_path / "rm"
    code = main(["train-rm", f"model.path={tiny_model_dir}", f"train_rm.data={data}", "train_rm.holdout=0.25",
                 "train_rm.epochs=8", "train_rm.batch_size=8", "train_rm.lr=1e-3", "learner.micro_batch_size=8",
                 f"train_rm.output={out}", f"output_dir={tmp_path / 'runs'}", "name=rm-test",
                 "resources.cpus_per_learner=1"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "held-out pair accuracy" in printed and f"reward model {out}" in printed
    info = json.loads((out / RM_INFO_FILE).read_text())
    assert info["format"] == "rlsys-scalar-rm" and info["n_pairs"] == 8 and info["train_pairs"] == 24
    assert info["steps"] == 24 and info["pair_accuracy"] * 8 == round(info["pair_accuracy"] * 8)  # a share of 8 pairs
    assert info["final_loss"] < info["initial_loss"] and info["pair_accuracy"] >= 0.75
    (run_dir,) = (tmp_path / "runs").glob("rm-test-rm-*")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == info["steps"]
    print(f"train-rm: loss {info['initial_loss']:.3f} -> {info['final_loss']:.3f}; held-out pair accuracy "
          f"{info['pair_accuracy_before']:.3f} -> {info['pair_accuracy']:.3f}")

    # The written directory reloads as the scorer; chosen above rejected on most training pairs.
    pairs = load_prompts(data, pairs=True, system_prompt=R1_SYSTEM_PROMPT).pairs
    groups = [RolloutGroup(p.prompt, [Rollout([], [], t, [], "stop", 0) for t in (p.chosen, p.rejected)])
              for p in pairs]
    rm = ScalarRewardModel(ScalarRMSpec(str(out)))
    scores = rm.score_groups(groups)
    wins = sum(s.scores[0] > s.scores[1] for s in scores)
    print(f"reloaded RM: chosen > rejected on {wins} of {len(scores)} pairs")
    assert wins > 0.75 * len(scores)

    # Through the actor class, with the images as object-store references (what the driver sends).
    store = MediaStore()
    ref_groups = [RolloutGroup(replace(g.prompt, images=[store.ref_item(m) for m in g.prompt.images]),
                               g.rollouts) for g in groups[:4]]
    assert ref_groups[0].prompt.images[0].png is None
    actor = ScalarRMActor(ScalarRMSpec(str(out)))
    via_actor = actor.score(ref_groups)
    assert [x for s in via_actor for x in s.scores] == pytest.approx([x for s in scores[:4] for x in s.scores], abs=1e-5)
    assert len(actor.call_log()) == 1 and actor.peak_memory_mb().host_mb > 0


@pytest.mark.parametrize("override, message", [
    ("train_rm.data=null", "train_rm.data = null: rlsys train-rm needs preference pairs"),
    ("model.path=/no/such/model", "model.path = '/no/such/model': no such directory"),
])
def test_train_rm_config_errors_exit_2_before_anything_starts(tiny_model_dir, tmp_path, capsys, override, message):
    from launch.cli import main

    data = write_pairs(tmp_path / "data", 2)
    code = main(["train-rm", f"model.path={tiny_model_dir}", f"train_rm.data={data}", override,
                 f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_train_rm_bad_pair_row_names_line_and_field(tiny_model_dir, tmp_path, capsys):
    from launch.cli import main

    data = write_pairs(tmp_path / "data", 3)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    row["margin"] = "a lot"
    lines[1] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    code = main(["train-rm", f"model.path={tiny_model_dir}", f"train_rm.data={data}", f"output_dir={tmp_path / 'runs'}"])
    assert code == 2 and f"{data}: line 2: margin: expected a finite number" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
