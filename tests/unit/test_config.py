"""The config tree: YAML + overrides resolve; invalid settings fail early with one line."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlsys.config import ConfigError, RunConfig, documented_yaml, load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "configs" / "default.yaml"


def test_default_yaml_resolves_and_overrides_apply():
    cfg = load_config(DEFAULT, ["rollout.n=4", "algorithm.name=rloo", "learner.lr=1e-5",
                                "algorithm.dual_clip=3.0", "data.synthetic.families=[count_color, sum_digits]"])
    assert cfg.rollout.n == 4
    assert cfg.algorithm.name == "rloo" and cfg.advantage_estimator == "rloo"
    assert cfg.learner.lr == pytest.approx(1e-5)
    assert cfg.algorithm.dual_clip == 3.0
    assert cfg.data.synthetic.families == ["count_color", "sum_digits"]
    # untouched fields keep the file's / dataclass defaults
    assert cfg.sampling.prompts_per_step == 16 and cfg.learner.zero_stage is None


def test_zero_stage_null_is_0_for_one_rank_and_2_for_more():
    from rlsys.specs import role_specs

    def stage(*overrides):
        return role_specs(load_config(DEFAULT, list(overrides)), "m").learner.trainer.zero_stage

    assert stage() == 0  # the default's one rank
    assert stage("learner.num_ranks=4") == 2
    assert stage("learner.num_ranks=4", "learner.zero_stage=3") == 3
    assert stage("learner.zero_stage=2") == 2  # a set stage is kept, one rank or not


def test_int_is_accepted_where_float_expected_but_not_the_reverse():
    assert load_config(None, ["learner.lr=1"]).learner.lr == 1.0
    with pytest.raises(ConfigError, match=r"rollout.n = 2.5: must be an integer"):
        load_config(None, ["rollout.n=2.5"])


@pytest.mark.parametrize("override, expected", [
    ("algorithm.name=foo", r"algorithm.name = 'foo': must be one of grpo, rloo, reinforce_pp, ppo"),
    ("rollout.n=-1", r"rollout.n = -1: must be >= 1"),
    ("learner.zero_stage=5", r"learner.zero_stage = 5: must be <= 3"),
    ("rollout.bogus=1", r"rollout.bogus: unknown key; allowed keys here: .*max_new_tokens"),
    ("algorithm.name=ppo", r"algorithm.name = 'ppo': needs critic.enabled = true"),
    ("algorithm.policy_loss=nope", r"algorithm.policy_loss = 'nope': must be one of .*ppo_clip"),
    ("algorithm.kl_estimator=k9", r"algorithm.kl_estimator = 'k9': must be one of k1, k2, k3"),
    ("sampling.mode=offline", r"sampling.offline_path = null: sampling.mode = 'offline' needs"),
    ("algorithm.off_policy_correction=icepop", r"algorithm.off_policy_correction = 'icepop': must be one of .*seq_mask"),
    ("rollout.stream_window=0", r"rollout.stream_window = 0: must be >= 1"),
    ("sampling.offline_path=runs/x", r"sampling.offline_path = 'runs/x': only sampling.mode = 'offline' or 'mixed'"),
    ("sampling.offline_fraction=0.5", r"sampling.offline_fraction = 0.5: only sampling.mode = 'mixed' uses it"),
    ("learner.micro_batch_size=true", r"learner.micro_batch_size = True: must be an integer"),
    ("reward.components=[{name: no_such_reward}]", r"reward.components\[0\].name = 'no_such_reward': must be one of"),
])
def test_invalid_settings_name_field_and_allowed(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(DEFAULT, [override])


def test_asynchronous_training_needs_an_off_policy_correction():
    # The default is synchronous (k = 0): no correction needed there, k = 1 without one fails.
    assert load_config(DEFAULT, ["algorithm.max_is_weight=null"]).sampling.max_staleness == 0
    with pytest.raises(ConfigError, match=r"sampling.max_staleness = 1: off-policy samples need algorithm.max_is_weight"):
        load_config(DEFAULT, ["sampling.max_staleness=1", "algorithm.max_is_weight=null"])


def test_a_masked_correction_needs_a_band():
    with pytest.raises(ConfigError, match=r"algorithm.max_is_weight = 0.9: seq_mask refuses it \(.*needs c > 1"):
        load_config(DEFAULT, ["algorithm.off_policy_correction=seq_mask", "algorithm.max_is_weight=0.9"])


@pytest.mark.parametrize("overrides, expected", [
    ([], r"sampling.offline_fraction = null: sampling.mode = 'mixed' needs"),
    (["sampling.offline_fraction=0.02"], r"offline_fraction = 0.02: with prompts_per_step = 16 that is 0 replayed"),
    (["sampling.offline_fraction=0.98"], r"offline_fraction = 0.98: with prompts_per_step = 16 that is 16 replayed"),
    (["sampling.offline_fraction=1.5"], r"sampling.offline_fraction = 1.5: must be <= 1.0"),
])
def test_mixed_sampling_needs_a_fraction_that_mixes(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(DEFAULT, ["sampling.mode=mixed", "sampling.offline_path=runs/x", *overrides])
    cfg = load_config(DEFAULT, ["sampling.mode=mixed", "sampling.offline_path=runs/x", "sampling.offline_fraction=0.25"])
    assert cfg.sampling.offline_fraction == 0.25


def test_sampling_ablation_arms_differ_only_in_sampling():
    arms = {name: to_dict(load_config(ROOT / f"configs/ablation/{name}.yaml")) for name in ("online", "offline", "mixed")}
    for cfg in arms.values():
        cfg.pop("name")
        cfg.pop("sampling")
    assert arms["online"] == arms["offline"] == arms["mixed"]


def test_ppo_with_critic_is_valid():
    cfg = load_config(DEFAULT, ["algorithm.name=ppo", "critic.enabled=true"])
    assert cfg.advantage_estimator == "gae"


def test_every_yaml_in_configs_resolves():
    files = sorted(ROOT.glob("configs/**/*.yaml"))
    assert DEFAULT in files
    for path in files:
        load_config(path)


def test_reference_yaml_documents_every_field_and_round_trips():
    text = documented_yaml()
    assert "# Samples per prompt (the group size G)." in text
    assert yaml.safe_load(text) == to_dict(RunConfig())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_config_show_prints_resolved_config():
    out = _cli("config", "show", "--config", str(DEFAULT), "rollout.n=4")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["rollout"]["n"] == 4 and shown["algorithm"]["name"] == "grpo"


@pytest.mark.parametrize("override, field", [
    ("algorithm.name=foo", "algorithm.name"), ("rollout.n=-1", "rollout.n"),
    ("learner.zero_stage=5", "learner.zero_stage"), ("nosuch.key=1", "nosuch"),
])
def test_cli_invalid_setting_exits_nonzero_with_one_line(override, field):
    out = _cli("config", "show", "--config", str(DEFAULT), override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in out.stderr
    assert "must" in lines[0] or "allowed" in lines[0]


def test_cli_rollout_rejects_a_bad_prompt_count_before_starting_anything():
    out = _cli("rollout", "--max-prompts", "0")
    assert out.returncode == 2 and out.stderr.strip() == "rlsys: rollout --max-prompts = 0: must be >= 1"
    out = _cli("rollout", "sampling.max_staleness=1", "algorithm.max_is_weight=null")
    assert out.returncode == 2 and "sampling.max_staleness = 1: off-policy samples need" in out.stderr


def test_library_imports_stay_light():
    code = ("import sys, rlsys, rlsys.algorithms, rlsys.config, rlsys.protocol;"
            "heavy = [m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_cluster_recipes_fit_their_nodes():
    from rlsys.config import gpu_plan

    recipes = sorted(ROOT.glob("configs/cluster/*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        cfg = load_config(path)
        assert cfg.model.path.startswith("Qwen/Qwen2.5-VL-")
        assert cfg.learner.backend == "nccl" and cfg.resources.address == "auto"
        assert cfg.resources.gpus_per_engine == cfg.rollout.tensor_parallel_size
        assert sum(gpu_plan(cfg)) <= cfg.resources.nodes * cfg.resources.gpus_per_node


def test_gpu_plan_that_does_not_fit_is_rejected():
    path = ROOT / "configs/cluster/qwen2_5_vl_3b_grpo.yaml"
    with pytest.raises(ConfigError, match=r"resources.nodes = 1: the roles need 16 GPUs"):
        load_config(path, ["resources.nodes=1"])
    with pytest.raises(ConfigError, match=r"resources.gpus_per_node = 1: one actor asks for 2"):
        load_config(path, ["resources.gpus_per_node=1", "rollout.tensor_parallel_size=2",
                           "resources.gpus_per_engine=2"])


def test_default_yaml_is_what_rlsys_train_runs_without_arguments():
    assert to_dict(load_config(DEFAULT)) == to_dict(load_config(None))
