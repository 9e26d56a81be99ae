"""The judge's compute class: a vLLM engine (rlsys.specs.JudgeSpec) scoring RolloutGroups with
the templates, parsing and aggregation of rlsys/rewards/judge.py. No Ray; vLLM imported when a
JudgeModel is built."""
from __future__ import annotations

from typing import Optional, Sequence

from rlsys.protocol import ModelScores, Prompt, RewardResult, RolloutGroup
from rlsys.rewards.judge import aggregate, judge_prompt, judge_seed_key
from rlsys.specs import JudgeSpec, prompt_seed

_IMAGE_CACHE_ENTRIES = 65536


class JudgeModel:
    """A vLLM judge engine (rlsys.specs.JudgeSpec) scoring RolloutGroups; no Ray.

    Prompts must hold image bytes (the actor resolves object-store references first). A judge
    whose processor is text-only is shown the question and response without the images.
    """

    def __init__(self, spec: JudgeSpec, cpus: Optional[float] = None, cpu_slot: int = 0):
        """cpus, cpu_slot: the actor's CPUs and bundle index (VLLMEngine's arguments)."""
        from rlsys.models.engine import VLLMEngine

        self.spec = spec
        self.engine = VLLMEngine.from_spec(spec.engine, cpus=cpus, cpu_slot=cpu_slot)
        self.max_model_len = int(spec.engine.max_model_len)
        self._image_tokens: dict[str, int] = {}  # sha256 -> expanded image-pad tokens

    def _prompt_length(self, prompt: Prompt) -> int:
        """Tokens the engine will see for `prompt` (image pads expanded), counting each distinct
        image once through the image processor (a group's G judge prompts share its images)."""
        from rlsys.models.forward import render_prompt

        processor = self.engine.processor
        text = render_prompt(processor, prompt)
        tok = getattr(processor, "tokenizer", processor)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        for m in prompt.images:
            if m.sha256 not in self._image_tokens:
                if len(self._image_tokens) >= _IMAGE_CACHE_ENTRIES:
                    self._image_tokens.clear()  # bounded: a long run sees unboundedly many images
                grid = processor.image_processor(images=[m.to_pil()], return_tensors="pt")["image_grid_thw"]
                merge = getattr(processor.image_processor, "merge_size", 1) ** 2
                self._image_tokens[m.sha256] = int(grid.prod(-1).sum()) // merge
            n += self._image_tokens[m.sha256] - 1  # the text holds one pad per image
        return n

    def _problem(self, prompt: Prompt) -> Optional[str]:
        """Why the engine would reject `prompt` (vLLM raises for the whole batch on one over-long
        prompt: prompt length >= max_model_len), or None."""
        try:
            n = self._prompt_length(prompt)
        except Exception as e:
            return f"judge prompt cannot be rendered: {type(e).__name__}: {e}".replace("\n", " ")
        if n >= self.max_model_len:
            return (f"judge prompt is {n} tokens; the judge's max_model_len {self.max_model_len} "
                    "leaves no room for a judgement")
        return None

    def judge_prompts(self, groups: Sequence[RolloutGroup]) -> list[list[Prompt]]:
        """[groups][G] the judge's prompt of each rollout."""
        images = self.engine.multimodal
        return [[judge_prompt(self.spec.template, g.prompt, r.response_text, images=images, index=i)
                 for i, r in enumerate(g.rollouts)] for g in groups]

    def score_groups(self, groups: Sequence[RolloutGroup]) -> list[ModelScores]:
        """One ModelScores per group ([G] scores, failures, first failure, [G] first-judgement
        texts; "" where no judgement was written). All judgements go to the engine in one
        generate call (continuous batching). A judge prompt that cannot be rendered or is too
        long fails its sample only (fallback, counted)."""
        spec = self.spec
        prompts = self.judge_prompts(groups)
        flat = [(gi, i, p) for gi, ps in enumerate(prompts) for i, p in enumerate(ps)]
        problems = {(gi, i): self._problem(p) for gi, i, p in flat}
        todo = [(gi, i, p) for gi, i, p in flat if problems[(gi, i)] is None]
        seeds = None
        if spec.temperature > 0:
            seeds = [prompt_seed(spec.seed, judge_seed_key(groups[gi].prompt.uid,
                                                           groups[gi].rollouts[i].response_text))
                     for gi, i, _ in todo]
        outputs = self.engine.generate([p for _, _, p in todo], n=spec.samples, temperature=spec.temperature,
                                       top_p=1.0, max_tokens=spec.max_new_tokens, seed=seeds,
                                       policy_version=0) if todo else []
        texts = {(gi, i): [r.response_text for r in out.rollouts] for (gi, i, _), out in zip(todo, outputs)}
        results = []
        for gi, g in enumerate(groups):
            scores, firsts, failures, first = [], [], 0, None
            for i in range(g.size):
                judged = texts.get((gi, i), [])
                score, failed, why = aggregate(judged, spec.fallback)
                why = problems[(gi, i)] or why
                scores.append(score)
                firsts.append(judged[0] if judged else "")
                if failed:
                    failures += 1
                    if first is None:
                        first = RewardResult.Failure(why, g.prompt.uid, i)
            results.append(ModelScores(scores=scores, failures=failures, first_failure=first, texts=firsts))
        return results

    def shutdown(self) -> None:
        self.engine.shutdown()
