"""Prompt sources. Online: the dataset in seeded epochs; the position is part of the resume state."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlsys.protocol import Prompt


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0


class PromptSampler:
    """Hands out B prompts per step from a shuffled epoch order; deterministic from the seed."""

    def __init__(self, prompts: list[Prompt], batch_size: int, seed: int, shuffle: bool = True):
        if not prompts:
            raise ValueError("the training set has no prompts")
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.state = SamplerState()
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next_batch(self) -> list[Prompt]:
        out = []
        while len(out) < self.batch_size:
            if self.state.position >= len(self._order):
                self.state = SamplerState(self.state.epoch + 1, 0)
                self._order = self._epoch_order(self.state.epoch)
            out.append(self.prompts[int(self._order[self.state.position])])
            self.state.position += 1
        return out

    def load_state(self, state: SamplerState) -> None:
        self.state = SamplerState(state.epoch, state.position)
        self._order = self._epoch_order(state.epoch)
