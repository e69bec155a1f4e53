import re

import pydantic_settings
import pytest
from conftest import REPO

from recsys_tasks.config import PYDANTIC_SETTINGS_CHECKED, Config, ConfigError, _Environment, load_config


def test_defaults_follow_the_notebook():
    config = Config()
    assert config.retrieval.tower_dims == (128, 64)
    # Batch sizes, epochs and the retrieval step size differ from the notebook's (4096 x 2, 16k x 3):
    # those give too few gradient steps to learn the planted signal at the default size.
    assert (config.retrieval.batch_size_rows, config.retrieval.epochs) == (512, 8)
    assert (config.ranking.embedding_dim, config.ranking.bottom_dims, config.ranking.top_dims) == (
        64,
        (128, 64),
        (128, 64, 32),
    )
    assert (config.ranking.batch_size_rows, config.ranking.epochs) == (1024, 3)
    assert (config.scoring.top_k, config.scoring.top_n) == (100, 20)
    assert config.store.key_prefix == "USER:"
    assert config.store.ttl_s == 3 * 24 * 3600


def test_yaml_then_env_then_params(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_rows: 500\n  seed: 7\nscoring:\n  top_k: 50\n")
    env = {"RECSYS__DATA__SEED": "9", "RECSYS__RETRIEVAL__TOWER_DIMS": "64,32", "UNRELATED": "x"}
    config = load_config(path, environ=env, overrides={"scoring.top_k": 30})
    assert config.data.num_rows == 500  # yaml
    assert config.data.seed == 9  # env beats yaml
    assert config.retrieval.tower_dims == (64, 32)
    assert config.scoring.top_k == 30  # params beat yaml


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scoring.top_n": 200}, "scoring.top_k (100) must be >= scoring.top_n (200)"),
        ({"data.num_rows": 0}, "data.num_rows must be > 0"),
        ({"ranking.epochs": -1}, "ranking.epochs must be >= 1"),
        ({"scoring.top_kk": 3}, "unknown config key 'scoring.top_kk'"),
        ({"nosuch.thing": 3}, "unknown config section 'nosuch'"),
        ({"data.num_rows": "many"}, "config key 'data.num_rows' expects int, got 'many'"),
        ({"data.num_rows": 2.5}, "expects int"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config().with_overrides(overrides)


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_nested_mapping_overrides():
    config = Config().with_overrides({"store": {"ttl_s": 60}, "artifact_root": "/x"})
    assert config.store.ttl_s == 60
    assert config.artifact_root == "/x"


def test_the_environment_source_runs_on_a_checked_pydantic_settings(monkeypatch):
    """config._Environment overrides pydantic-settings' private ``EnvSettingsSource._load_env_vars``."""
    installed = ".".join(pydantic_settings.__version__.split(".")[:2])
    assert installed in PYDANTIC_SETTINGS_CHECKED, (
        f"pydantic-settings {pydantic_settings.__version__} is not one recsys_tasks/config.py was checked on "
        f"{PYDANTIC_SETTINGS_CHECKED}: _Environment overrides its private EnvSettingsSource._load_env_vars. Check "
        "that EnvSettingsSource still reads the variables through it (this test's second half), then add the "
        "version to PYDANTIC_SETTINGS_CHECKED")
    pins = {}
    for name in ("constraints.txt", "constraints-gpu-worker.txt"):
        found = re.search(r"^pydantic-settings==(\d+\.\d+)\.", (REPO / name).read_text(), re.M)
        pins[name] = found and found.group(1)
    assert all(pin in PYDANTIC_SETTINGS_CHECKED for pin in pins.values()), pins
    # The override is what the source reads: the given mapping, not the process's environment.
    monkeypatch.setenv("RECSYS__SCORING__TOP_K", "99")
    assert _Environment({"RECSYS__SCORING__TOP_K": "7", "RECSYS__DATA__SEED": "3"})() == {
        "scoring": {"top_k": "7"}, "data": {"seed": "3"}}
