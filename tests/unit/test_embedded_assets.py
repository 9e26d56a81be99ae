"""The embedded default's cached assets do not depend on which run asks for them first."""
import pyarrow.parquet as pq

from launch.embedded import demonstration_task, synthetic_data
from rlsys.config import load_config


def _small_run(tmp_path):
    return load_config(None, [f"model.cache_dir={tmp_path}", "data.synthetic.train_size=8",
                              "data.synthetic.test_size=4", "data.synthetic.num_colors=4"])


def test_the_warm_start_learns_from_the_default_sized_task_whatever_the_run_asks(tmp_path):
    # The cached model's key leaves the run's train_size out: the first caller (often a small
    # test run) once shrank the warm start to 64 rows and the default learned less from it.
    cfg = _small_run(tmp_path)
    demo = demonstration_task(cfg)
    assert (demo.train_size, demo.test_size) == (2048, 128)
    assert demo.num_colors == 4 and demo.families == cfg.data.synthetic.families


def test_synthetic_data_is_cached_per_task_spec(tmp_path):
    cfg = _small_run(tmp_path)
    train, test = synthetic_data(cfg)
    assert (pq.read_metadata(train).num_rows, pq.read_metadata(test).num_rows) == (8, 4)
    bigger = demonstration_task(cfg)
    bigger.train_size, bigger.test_size = 16, 2
    other_train, _ = synthetic_data(cfg, bigger)
    assert other_train.parent != train.parent
    assert pq.read_metadata(other_train).num_rows == 16
    assert pq.read_metadata(train).num_rows == 8  # the first entry is untouched
