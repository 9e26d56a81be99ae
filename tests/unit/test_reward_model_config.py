"""Reward-model entries of reward.components: what a model entry needs, what a rule entry may not
set, bad paths and templates failing with one line before anything starts; their roles (specs,
bundles, columns)."""
import json

import pytest

from rlsys.config import ConfigError, load_config
from rlsys.distributed.placement import bundle_roles, plan_roles
from rlsys.specs import component_column, reward_spec, role_specs


def _cfg(tmp_path, entries: str, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  components:\n" + entries)
    return load_config(str(path), list(overrides))


@pytest.fixture
def rm_dir(tmp_path):
    d = tmp_path / "rm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    (d / "rlsys_rm.json").write_text("{}")
    return d


def test_model_entries_become_roles_with_their_own_bundles(tmp_path, rm_dir):
    cfg = _cfg(tmp_path, "    - {name: accuracy, weight: 1.0}\n"
               f"    - {{name: null, model: scalar, path: {rm_dir}, weight: 0.5, replicas: 2, cpus: 0.25}}\n"
               "    - {name: null, model: judge, path: reference, alias: critic, normalize: true, max_new_tokens: 32}\n")
    specs = role_specs(cfg, "/models/policy")
    scalar, judge = specs.reward_models
    assert (scalar.name, scalar.weight, scalar.replicas, scalar.cpus) == ("scalar", 0.5, 2, 0.25)
    assert scalar.spec.model_path == str(rm_dir) and scalar.spec.max_length == 256 + 48
    assert (judge.name, judge.normalize) == ("critic", True)
    assert judge.spec.engine.model_path == "/models/policy"  # 'reference': the initial policy (no reference.path)
    assert "{question}" in judge.spec.template and judge.spec.max_new_tokens == 32
    # the judge's context holds the policy's whole sequence inside its template, then the critique
    assert judge.spec.engine.max_model_len == 512 + 48 + 32
    with_ref = _cfg(tmp_path, "    - {name: null, model: judge, path: reference, gpus: 2}\n", "reference.path=/models/ref",
                    "rollout.tensor_parallel_size=4", "resources.gpus_per_engine=4")
    engine = role_specs(with_ref, "/models/policy").reward_models[0].spec.engine
    assert engine.model_path == "/models/ref" and engine.tensor_parallel_size == 2  # its own GPUs, not the policy's TP
    assert reward_spec(cfg).components == (("accuracy", 1.0),)  # the rule actor gets the rules only
    plan = plan_roles(cfg, needs_reference=False)
    assert [len(r) for r in plan.reward_models] == [2, 1]
    assert [plan.bundles[i] for i in plan.reward_models[0]] == [{"CPU": 0.25}, {"CPU": 0.25}]
    assert bundle_roles(plan).count("reward model") == 3
    assert [component_column(c) for c in cfg.reward.components] == ["accuracy", "scalar", "critic"]


@pytest.mark.parametrize("entry, message", [
    ("{name: null, model: scalar}", "reward.components[0].path = null: a scalar entry needs its checkpoint"),
    ("{name: null, model: scalar, path: ./missing}", "reward.components[0].path = './missing': no such directory"),
    ("{name: r1_format, model: judge, path: reference}", "reward.components[0].name = 'r1_format': a model entry has no rule name"),
    ("{name: accuracy, path: /x}", "reward.components[0].path = '/x': only scalar / judge entries read it (this is a rule entry)"),
    ("{name: null, model: scalar, path: RM, template: t.txt}", "reward.components[0].template = 't.txt': only judge entries read it"),
    ("{name: null, model: judge, path: reference, batch_size: 4}", "reward.components[0].batch_size = 4: only scalar entries read it"),
    ("{name: null, model: judge, path: reference, template: /no/such.txt}", "reward.components[0].template = '/no/such.txt': "),
    ("{name: null, model: judge, path: reference, samples: 3}", "samples = 3 with temperature = 0"),
    ("{name: null}", "reward.components[0].name = null: a rule entry names its reward"),
    ("{name: null, model: judge, path: reference, gpus: 0.5}", "reward.components[0].gpus = 0.5: a judge replica"),
    ("{name: accuracy, send_inputs: true}", "reward.components[0].send_inputs = true: only URL entries"),
])
def test_bad_model_entries_fail_in_one_line(tmp_path, entry, message):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, f"    - {entry}\n")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_directory_that_is_no_reward_model(tmp_path):
    d = tmp_path / "policy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    with pytest.raises(ConfigError, match="neither an `rlsys train-rm` output"):
        _cfg(tmp_path, f"    - {{name: null, model: scalar, path: {d}}}\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"not a model directory \(no config.json\)"):
        _cfg(tmp_path, f"    - {{name: null, model: judge, path: {tmp_path / 'empty'}}}\n")


def test_a_judge_template_without_its_placeholders(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Rate this: {response}")
    with pytest.raises(ConfigError, match=r"reward.components\[0\].template = .*question"):
        _cfg(tmp_path, f"    - {{name: null, model: judge, path: reference, template: {t}}}\n")
    t.write_text("Q: {question}\nA: {response}\nCritique, then <score>0-10</score>.")
    cfg = _cfg(tmp_path, f"    - {{name: null, model: judge, path: reference, template: {t}}}\n")
    assert role_specs(cfg, "/p").reward_models[0].spec.template == t.read_text()


def test_eval_model_entries_reuse_the_runs_models(tmp_path, rm_dir):
    entry = f"    - {{name: null, model: scalar, path: {rm_dir}}}\n"
    cfg = _cfg(tmp_path, entry, f"eval.rewards=[{{name: accuracy}}, {{name: null, model: scalar, path: {rm_dir}}}]")
    assert [c.model for c in cfg.eval.rewards] == [None, "scalar"]
    with pytest.raises(ConfigError, match=r"eval.rewards\[0\].model = 'judge': evaluation scores with the run's own"):
        _cfg(tmp_path, entry, "eval.rewards=[{name: null, model: judge, path: reference}]")


def test_a_hub_id_is_left_to_the_loader(tmp_path):
    cfg = _cfg(tmp_path, "    - {name: null, model: judge, path: Qwen/Qwen2.5-VL-7B-Instruct}\n")
    assert cfg.reward.components[0].path == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_a_url_entry_sends_inputs_as_a_scorer_option(tmp_path):
    cfg = _cfg(tmp_path, "    - {name: 'http://127.0.0.1:9/score', send_inputs: true, alias: rm}\n")
    assert reward_spec(cfg).components == (("http://127.0.0.1:9/score", 1.0, (("name", "rm"), ("send_inputs", True))),)


def test_rlsys_train_with_a_bad_rm_path_or_template_stops_in_one_line(tmp_path, capsys):
    from launch.cli import main

    for entry in ("{name: null, model: scalar, path: /no/such/rm}",
                  f"{{name: null, model: judge, path: reference, template: {tmp_path / 'missing.txt'}}}"):
        assert main(["train", f"reward.components=[{entry}]", f"output_dir={tmp_path / 'runs'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlsys: config error: reward.components[0].") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing was built or started
    assert main(["config", "reference"]) == 0
    out = capsys.readouterr().out
    for name in ("model", "path", "replicas", "cpus", "gpus", "batch_size", "normalize", "template", "samples",
                 "temperature", "max_new_tokens", "fallback", "send_inputs"):
        assert f"#   {name}: " in out, name
    assert "train_rm:" in out
