"""Every run's rollouts as Parquet: the ablation record, a debugging aid, and what offline
sampling replays. One row per sample; images by content hash (the pixels stay in the dataset)."""
from __future__ import annotations

from pathlib import Path

from rlsys.protocol import ScoredGroup

SCHEMA_FIELDS = ("step", "prompt_uid", "sample_index", "prompt_token_ids", "response_token_ids",
                 "response_text", "reward", "reward_components", "behaviour_logprobs",
                 "finish_reason", "policy_version", "image_hashes", "answer", "reward_texts")


class RolloutRecorder:
    """Writes each step's scored groups to `<dir>/step_<n>.parquet`. One complete file per step,
    so a run that dies keeps every finished step readable; `pyarrow.parquet.read_table(dir)`
    reads them all as one table."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _schema(self):
        import pyarrow as pa

        return pa.schema([
            ("step", pa.int64()), ("prompt_uid", pa.string()), ("sample_index", pa.int32()),
            ("prompt_token_ids", pa.list_(pa.int32())), ("response_token_ids", pa.list_(pa.int32())),
            ("response_text", pa.string()), ("reward", pa.float64()),
            ("reward_components", pa.map_(pa.string(), pa.float64())),
            ("behaviour_logprobs", pa.list_(pa.float32())), ("finish_reason", pa.string()),
            ("policy_version", pa.int64()), ("image_hashes", pa.list_(pa.string())), ("answer", pa.string()),
            # component -> what it wrote about this sample (a judge's critique); empty for rules
            ("reward_texts", pa.map_(pa.string(), pa.string())),
        ])

    def write(self, step: int, scored: list[ScoredGroup]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = {name: [] for name in SCHEMA_FIELDS}
        for sg in scored:
            prompt = sg.group.prompt
            for j, r in enumerate(sg.group.rollouts):
                values = (step, prompt.uid, j, list(r.prompt_token_ids), list(r.response_token_ids),
                          r.response_text, float(sg.reward.rewards[j]),
                          [(k, float(v[j])) for k, v in sg.reward.components.items()],
                          list(r.behaviour_logprobs), r.finish_reason, r.policy_version,
                          [m.sha256 for m in prompt.images], prompt.answer,
                          [(k, v[j]) for k, v in sg.reward.texts.items()])
                for name, value in zip(SCHEMA_FIELDS, values):
                    rows[name].append(value)
        table = pa.table(rows, schema=self._schema())
        tmp = self.directory / f".step_{step:06d}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.directory / f"step_{step:06d}.parquet")  # readers never see half a file
        return table.num_rows
