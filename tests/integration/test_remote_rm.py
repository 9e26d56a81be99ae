"""The remote-RM example (examples/remote_rm/serve_rm.py) served for real on 127.0.0.1 and
called through rlsys's remote reward client with `send_inputs`: the scores equal the same RM's
in-process scores, the image reaches the server, a missing token is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from ray_head import free_port  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_rm_dir, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "RLSYS_REWARD_TOKEN": "s3cret", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path_factory.mktemp("server") / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples/remote_rm/serve_rm.py"), str(tiny_rm_dir),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()  # printed once the model is loaded and the socket bound
        log.seek(0)
        assert line.startswith(f"serving {tiny_rm_dir} on http://127.0.0.1:{port}/score"), (line, log.read()[-2000:])
        yield f"http://127.0.0.1:{port}/score"
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _groups(task_data):
    from rlsys.data import load_prompts
    from rlsys.data.templates import R1_SYSTEM_PROMPT
    from rlsys.protocol import Rollout, RolloutGroup

    prompts = load_prompts(task_data[0], system_prompt=R1_SYSTEM_PROMPT).prompts[:3]
    texts = ["<think>red 2.</think><answer>2</answer>", "<think>I will guess.</think><answer>1</answer>"]
    return [RolloutGroup(p, [Rollout([], [], t, [], "stop", 0) for t in texts]) for p in prompts]


def test_remote_rm_scores_as_the_rm_does_in_process(server, tiny_rm_dir, task_data, monkeypatch):
    from rlsys.rewards import RewardScorer
    from rlsys.rewards.scalar_rm import ScalarRewardModel
    from rlsys.specs import ScalarRMSpec

    groups = _groups(task_data)
    monkeypatch.setenv("RLSYS_REWARD_TOKEN", "s3cret")
    with RewardScorer([(server, 1.0, {"name": "remote_rm", "send_inputs": True})], timeout_s=60) as scorer:
        remote = scorer.score_groups(groups)
    direct = ScalarRewardModel(ScalarRMSpec(model_path=str(tiny_rm_dir))).score_groups(groups)
    assert all(r.failures == 0 for r in remote)
    got = [v for r in remote for v in r.components["remote_rm"]]
    want = [v for d in direct for v in d.scores]
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(v, 5) for v in got}) > 1  # different images and responses score differently


def test_without_inputs_or_token_nothing_is_scored(server, task_data, monkeypatch):
    from rlsys.rewards import RewardScorer

    groups = _groups(task_data)
    monkeypatch.setenv("RLSYS_REWARD_TOKEN", "s3cret")
    with RewardScorer([(server, 1.0, {"name": "rm"})], timeout_s=60) as scorer:  # no prompt, no image sent
        (first, *_) = scorer.score_groups(groups)
    assert first.component_failures == {"rm": 2} and first.components["rm"] == [0.0, 0.0]
    request = urllib.request.Request(server, data=json.dumps({"items": []}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 401
