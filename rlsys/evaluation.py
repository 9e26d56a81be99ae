"""Held-out evaluation, scored by the run's own rewards (or `eval.rewards`).

The first eval reward component is the verifier: `accuracy` is its mean score over all
responses, and a response *passes* (for pass@k) when it scores at least `pass_threshold`. The
R1 format rate is reported beside it whatever the rewards are, since every rollout is asked for
that format. `eval_tables` writes what a person reads after a run: results.json, results.md and
samples.jsonl (prompt, image hashes, responses, rewards) of the first prompts.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from math import comb
from pathlib import Path
from typing import Optional, Sequence

from rlsys.protocol import Prompt, RewardResult, RolloutGroup


@dataclass
class EvalResult:
    """accuracy:        mean verifier score over the n responses.
    format_rate:        share of responses in the R1 format.
    n:                  responses scored (prompts x samples_per_prompt).
    response_length_mean: tokens per response.
    samples_per_prompt: eval.n.
    pass_at_k:          pass@samples_per_prompt (unbiased estimate, Chen et al. 2021), None when 1.
    components:         mean score of each eval reward component, by name (before weighting).
    reward_failures:    reward calls that failed (raised, timed out, bad value) and scored 0.
    """

    accuracy: float
    format_rate: float
    n: int
    response_length_mean: float
    samples_per_prompt: int = 1
    pass_at_k: Optional[float] = None
    components: dict[str, float] = field(default_factory=dict)
    reward_failures: int = 0

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a metrics row (`eval/...` once prefixed)."""
        out = {"accuracy": self.accuracy, "format_rate": self.format_rate, "n": float(self.n),
               "response_length_mean": self.response_length_mean,
               "reward_failures": float(self.reward_failures)}
        if self.pass_at_k is not None:
            out[f"pass@{self.samples_per_prompt}"] = self.pass_at_k
        out.update({f"reward/{name}": value for name, value in self.components.items()})
        return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k responses drawn without replacement from n passes), c of n passing:
    1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate_groups(groups: Sequence[RolloutGroup], results: Sequence[RewardResult],
                    pass_threshold: float = 1.0) -> EvalResult:
    """Metrics of scored held-out groups. results[i] scores groups[i]; its first component is
    the verifier."""
    from rlsys.rewards import get_reward

    if len(groups) != len(results):
        raise ValueError(f"evaluate_groups: {len(results)} results for {len(groups)} groups")
    if not groups or not any(g.rollouts for g in groups):
        raise ValueError("evaluation got no responses")
    fmt = get_reward("r1_format")
    names = list(results[0].components)
    verifier = names[0]
    sums = dict.fromkeys(names, 0.0)
    n = formatted = length = failures = 0
    passes, sizes = [], {len(g.rollouts) for g in groups}
    for group, result in zip(groups, results):
        for i, rollout in enumerate(group.rollouts):
            for name in names:
                sums[name] += result.components[name][i]
            formatted += fmt(rollout.response_text, group.prompt.answer, group.prompt.metadata)
            length += len(rollout.response_token_ids)
        passes.append(sum(s >= pass_threshold for s in result.components[verifier]))
        n += len(group.rollouts)
        failures += result.failures
    k = max(sizes)
    pass_k = None
    if k > 1:
        pass_k = sum(pass_at_k(len(g.rollouts), c, min(k, len(g.rollouts)))
                     for g, c in zip(groups, passes)) / len(groups)
    means = {name: total / n for name, total in sums.items()}
    return EvalResult(accuracy=means[verifier], format_rate=formatted / n, n=n, response_length_mean=length / n,
                      samples_per_prompt=k, pass_at_k=pass_k, components=means, reward_failures=failures)


def _prompt_text(prompt: Prompt) -> str:
    """The last user turn's text (image parts shown as <image>)."""
    user = [m for m in prompt.messages if m.get("role") == "user"] or prompt.messages
    content = user[-1].get("content", "") if user else ""
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") if part.get("type") == "text" else f"<{part.get('type')}>"
                    for part in content)


def eval_tables(out_dir: Path, result: EvalResult, groups: Sequence[RolloutGroup],
                results: Sequence[RewardResult], num_samples: int) -> Path:
    """Write out_dir/results.json, results.md and samples.jsonl (the first num_samples prompts);
    returns out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(asdict(result), indent=2))
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in result.metrics().items()]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "samples.jsonl", "w") as fh:
        for group, scored in list(zip(groups, results))[:num_samples]:
            fh.write(json.dumps({
                "uid": group.prompt.uid, "prompt": _prompt_text(group.prompt),
                "images": [im.sha256[:16] for im in group.prompt.images], "answer": group.prompt.answer,
                "responses": [r.response_text for r in group.rollouts], "rewards": scored.rewards,
                "components": scored.components, "critiques": scored.texts}) + "\n")
    return out_dir
