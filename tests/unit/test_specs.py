"""rlsys/specs.py: the one place a RunConfig becomes the roles' specs, and the per-prompt seeds."""
from __future__ import annotations

from pathlib import Path

from rlsys.config import load_config
from rlsys.specs import SamplingSpec, call_seed, prompt_seed, role_specs

ROOT = Path(__file__).resolve().parents[2]


def test_trainer_fields_reach_the_learner_and_the_critic_alike():
    cfg = load_config(ROOT / "configs/algorithms/ppo.yaml", [
        "learner.gradient_checkpointing=true", "algorithm.loss_agg=seq_mean_token_sum_norm",
        "algorithm.norm_length=32", "model.trust_remote_code=true", "critic.lr=3e-4", "critic.zero_stage=3",
        "learner.zero_stage=2"])
    specs = role_specs(cfg, "/models/policy")
    for trainer in (specs.learner.trainer, specs.critic.trainer):
        assert trainer.gradient_checkpointing is True and trainer.trust_remote_code is True
        assert (trainer.loss_agg, trainer.norm_length) == ("seq_mean_token_sum_norm", 32)
        assert (trainer.total_steps, trainer.ppo_epochs) == (cfg.total_steps, cfg.learner.ppo_epochs)
    assert (specs.critic.trainer.lr, specs.critic.trainer.zero_stage) == (3e-4, 3)
    assert (specs.learner.trainer.lr, specs.learner.trainer.zero_stage) == (cfg.learner.lr, 2)
    assert specs.engine.trust_remote_code is True and specs.engine.model_path == "/models/policy"


def test_reference_only_with_kl_and_kl_in_reward_is_not_also_a_loss():
    assert role_specs(load_config(None), "/m").reference is None
    specs = role_specs(load_config(None, ["algorithm.kl_coef=0.1", "algorithm.name=reinforce_pp",
                                          "algorithm.kl_in_reward=true"]), "/m")
    assert specs.reference.temperature == specs.learner.temperature == 0.7
    assert specs.learner.kl_coef == 0.0


def test_sampling_specs_and_seeds():
    specs = role_specs(load_config(None), "/m")
    assert specs.train_sampling == SamplingSpec(8, 0.7, 1.0, 48, None)
    assert specs.eval_sampling == SamplingSpec(1, 0.0, 1.0, 48, None)
    assert specs.train_sampling.for_call(7).seed == 7
    # Seeds depend on (run seed, step, round) and the prompt uid only; they are stable values.
    assert call_seed(0, 3, 1) == call_seed(0, 3, 1) != call_seed(0, 3, 2) != call_seed(1, 3, 1)
    s = call_seed(0, 3, 1)
    assert prompt_seed(s, "train:5") != prompt_seed(s, "train:6")
    assert 0 <= prompt_seed(s, "train:5") < 2**30
    # sha256 of "<call seed>:<uid>", first 4 bytes little-endian, 30 bits: the same in every process.
    import hashlib

    digest = hashlib.sha256(b"12345:train:5").digest()
    assert prompt_seed(12345, "train:5") == int.from_bytes(digest[:4], "little") & (2**30 - 1) == 901031706
