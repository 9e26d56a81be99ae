"""A scalar reward model (a HF sequence-classification checkpoint with one label) scoring
prompt + response text. Images are not shown to it: text-only reward models are the common case;
a multimodal RM is a user reward class away."""
from __future__ import annotations

from rlsys.protocol import RolloutGroup


class ScalarRewardModel:
    def __init__(self, path: str, dtype: str = "float32", batch_size: int = 16, max_length: int = 2048):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, torch_dtype=getattr(torch, dtype)).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {path}: expected 1 output label, found {self.model.config.num_labels}")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length

    def _text(self, group: RolloutGroup, response: str) -> str:
        question = " ".join(part.get("text", "") if isinstance(part, dict) else str(part)
                            for m in group.prompt.messages if m["role"] == "user"
                            for part in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
        return f"{question}\n{response}"

    def score(self, group: RolloutGroup) -> list[float]:
        import torch

        texts = [self._text(group, r.response_text) for r in group.rollouts]
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_length)
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out
