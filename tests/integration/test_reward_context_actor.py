"""Context rewards through the real reward actor on a real local Ray: the groups arrive with
images as object-store references (as the driver ships them), the actor fetches the bytes and
the reward, in the actor's worker process, reads decoded pixels."""
from __future__ import annotations

import json
import textwrap

import pytest
from PIL import Image

pytestmark = pytest.mark.integration

REWARDS = textwrap.dedent('''
    COLOURS = {(255, 0, 0): "red", (0, 0, 255): "blue"}

    def colour_of_pixel(sample):
        return 1.0 if COLOURS.get(sample.images[0].getpixel((0, 0))) == sample.answer else 0.0

    def widths(completions, images, **kwargs):
        return [float(imgs[0].width) for imgs in images]
''')


def test_image_reward_in_the_reward_actor_on_ref_form_prompts(ray_cluster, tmp_path):
    import ray

    from actors.reward import RewardActor
    from rlsys.data import load_prompts
    from rlsys.distributed.media_store import MediaStore
    from rlsys.protocol import Rollout, RolloutGroup
    from rlsys.specs import RewardSpec

    Image.new("RGB", (56, 56), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (84, 56), (0, 0, 255)).save(tmp_path / "blue.png")
    rows = [{"id": "r", "prompt": "Which colour?", "images": ["red.png"], "answer": "red"},
            {"id": "b", "prompt": "Which colour?", "images": ["blue.png"], "answer": "red"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ctx_rewards.py").write_text(REWARDS)
    prompts = MediaStore().offload(load_prompts(tmp_path / "rows.jsonl").prompts)
    assert all(m.png is None and m.ref is not None for p in prompts for m in p.images)
    groups = [RolloutGroup(p, [Rollout([1], [2], t, [0.0], "stop", 0) for t in ("x", "y")]) for p in prompts]

    spec = RewardSpec(components=((f"{tmp_path / 'ctx_rewards.py'}:colour_of_pixel", 1.0, (("name", "colour"),)),
                                  (f"{tmp_path / 'ctx_rewards.py'}:widths", 0.01, (("name", "width"),))),
                      timeout_s=30, num_workers=1)
    actor = ray.remote(RewardActor).options(num_cpus=0.5).remote(spec)
    try:
        red, blue = ray.get(actor.score.remote(groups), timeout=180)
    finally:
        ray.kill(actor)
    assert red.components == {"colour": [1.0, 1.0], "width": [56.0, 56.0]}
    assert blue.components == {"colour": [0.0, 0.0], "width": [84.0, 84.0]}
    assert red.rewards == pytest.approx([1.56, 1.56]) and blue.rewards == pytest.approx([0.84, 0.84])
    assert red.failures == blue.failures == 0
