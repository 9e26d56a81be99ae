"""Frozen reference policy: per-token log-probs of sampled responses, no grad. No Ray here.

Used for the KL term (KL(pi || pi_ref)). It runs the same collate + forward code as the
learner, so for identical weights the two agree to numerical noise. No DeepSpeed: the
reference never trains, and one plain replica per actor is what a KL term needs.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


class ReferenceModel:
    """spec: the model, dtype, micro-batch size, temperature (must match the sampling
    temperature, as the learner's does: log-probs of logits / temperature) and pack_prompts
    (as the learner's: rlsys/models/packing.py).
    device: "auto" = the current CUDA device if there is one, else CPU.
    """

    def __init__(self, spec, device: str = "auto"):
        from rlsys.models.loading import load_policy, load_processor, pad_token_id

        self.model_path = str(spec.model_path)
        self.micro_batch_size = spec.micro_batch_size
        self.temperature = spec.temperature
        if device == "auto":
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.processor = load_processor(self.model_path, trust_remote_code=spec.trust_remote_code)
        self.model = load_policy(self.model_path, spec.dtype, trust_remote_code=spec.trust_remote_code).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self.pad_token_id = pad_token_id(self.processor)
        from rlsys.models.packing import packable

        self.pack_prompts = spec.pack_prompts and packable(self.model, self.processor)

    @torch.no_grad()
    def compute_logprobs(self, samples: Sequence[Any]) -> list[torch.Tensor]:
        """samples: TrainSample-like (input_ids [P+R], response_start, images).
        -> list of [R_i] float32 CPU tensors, in input order."""
        from rlsys.models.forward import token_logprobs
        from rlsys.models.packing import collate_for_forward

        out: list[torch.Tensor] = []
        for i in range(0, len(samples), self.micro_batch_size):
            mb = list(samples[i:i + self.micro_batch_size])
            batch = collate_for_forward(mb, self.processor, self.pad_token_id, self.model, self.pack_prompts)
            lp, _, _ = token_logprobs(self.model, batch, temperature=self.temperature,
                                      with_entropy=False)
            out += [lp[j, : s.response_length].float().cpu() for j, s in enumerate(mb)]
        return out
