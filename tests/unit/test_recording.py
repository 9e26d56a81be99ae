"""Rollout records round-trip through Parquet with every field."""
import pyarrow.parquet as pq

from rlsys.protocol import MediaItem, Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup
from rlsys.recording import RolloutRecorder


def test_rollouts_round_trip(tmp_path):
    img = MediaItem("abc123", b"png", 56, 56)
    group = RolloutGroup(Prompt("syn:3", [{"role": "user", "content": "q"}], [img], answer="2"), [
        Rollout([1, 2], [5, 6, 7], "<answer>2</answer>", [-0.1, -0.2, -0.3], "stop", 4),
        Rollout([1, 2], [8], "x", [-1.5], "length", 4)])
    scored = ScoredGroup(group, RewardResult([1.5, 0.0], {"accuracy": [1.0, 0.0], "r1_format": [1.0, 0.0]}))
    rec = RolloutRecorder(tmp_path / "rollouts")
    assert rec.write(7, [scored]) == 2
    assert rec.write(8, [scored]) == 2
    rows = pq.read_table(tmp_path / "rollouts").to_pylist()
    assert len(rows) == 4
    first = rows[0]
    assert first["step"] == 7 and first["prompt_uid"] == "syn:3" and first["sample_index"] == 0
    assert first["response_token_ids"] == [5, 6, 7] and first["prompt_token_ids"] == [1, 2]
    assert first["reward"] == 1.5 and dict(first["reward_components"]) == {"accuracy": 1.0, "r1_format": 1.0}
    assert abs(first["behaviour_logprobs"][2] + 0.3) < 1e-6
    assert first["policy_version"] == 4 and first["image_hashes"] == ["abc123"] and first["answer"] == "2"
    assert rows[1]["finish_reason"] == "length" and rows[3]["step"] == 8
