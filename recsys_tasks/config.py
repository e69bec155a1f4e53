"""One configuration tree for the whole pipeline, on pydantic-settings: defaults (the sections of
:mod:`recsys_tasks.settings`), then a YAML file, then ``RECSYS__SECTION__FIELD`` environment variables, then
DAG params or ``--set`` (dotted keys such as ``"scoring.top_k"``). Unknown keys and bad values are errors."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from recsys_tasks.settings import (
    DataConfig,
    EvaluateConfig,
    QualityConfig,
    RankingConfig,
    RetentionConfig,
    RetrievalConfig,
    ScoringConfig,
    StoreConfig,
    TransformConfig,
)

__all__ = [
    "Config", "ConfigError", "DataConfig", "EvaluateConfig", "QualityConfig", "RankingConfig", "RetentionConfig",
    "RetrievalConfig", "ScoringConfig", "StoreConfig", "TransformConfig", "load_config", "parse_set_pairs",
]
ENV_PREFIX = "RECSYS__"
_TYPE_NAMES = {"int": "int", "bool": "bool", "float": "float", "string": "str", "tuple": "tuple"}


class ConfigError(ValueError):
    """A configuration key or value that the pipeline cannot use."""


class Config(BaseSettings):
    """The whole pipeline's settings."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, env_nested_delimiter="__", use_attribute_docstrings=True,
        coerce_numbers_to_str=True,
    )

    artifact_root: str = "artifacts"
    """Each run writes under ``<artifact_root>/<dag_id>/<run_id>/``."""
    data: DataConfig = DataConfig()
    transform: TransformConfig = TransformConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    scoring: ScoringConfig = ScoringConfig()
    store: StoreConfig = StoreConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    quality: QualityConfig = QualityConfig()
    retention: RetentionConfig = RetentionConfig()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in: :func:`load_config` reads the environment, as one layer of several."""
        return (init_settings,)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def with_overrides(self, overrides: Mapping[str, Any], *, origin: str = "overrides") -> Config:
        """Return a copy with dotted keys (``"scoring.top_k"``) or nested dicts applied."""
        merged = self.to_dict()
        for key, value in _flatten(overrides).items():
            section, _, name = key.rpartition(".")
            target = merged
            for part in section.split(".") if section else []:
                if not isinstance(target.get(part), dict):
                    target[part] = {}  # an unknown section: refused, with the key, below
                target = target[part]
            target[name] = value
        try:
            return Config(**merged)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: {_one_line(exc)}") from None


# _Environment overrides EnvSettingsSource._load_env_vars, a private method: pydantic-settings has no public
# way to read variables from a given mapping (pydantic/pydantic-settings#653). The versions it was checked
# on (major.minor; this venv and the GPU worker's); tests/test_config.py fails with this note on any other.
PYDANTIC_SETTINGS_CHECKED = ("2.15", "2.16")


class _Environment(EnvSettingsSource):
    """pydantic-settings' reading of ``RECSYS__SECTION__FIELD`` variables, from a given mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Config)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}  # names are not case-sensitive


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults, then the YAML file, then ``RECSYS__*`` environment variables, then ``overrides``."""
    config = Config()
    if path is not None:
        config = config.with_overrides(_read_yaml(Path(path)), origin=str(path))
    env = os.environ if environ is None else environ
    unknown = sorted({k[len(ENV_PREFIX):].split("__")[0].lower() for k in env if k.upper().startswith(ENV_PREFIX)}
                     - set(Config.model_fields))
    if unknown:
        raise ConfigError(f"environment: unknown config section {unknown[0]!r} in a {ENV_PREFIX} variable")
    from_env = _Environment(env)()
    if from_env:
        config = config.with_overrides(from_env, origin="environment")
    if overrides:
        config = config.with_overrides(overrides, origin="params")
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        loaded = yaml.safe_load(fh) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as one line that names the dotted key."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    key, kind, value, ctx = ".".join(loc), error["type"], error.get("input"), error.get("ctx", {})
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        if len(loc) == 1 and isinstance(value, dict):
            inner = next(iter(_flatten(value)), "")
            return f"unknown config section {loc[0]!r} in key {f'{key}.{inner}'.rstrip('.')!r}"
        owner = getattr(Config(), loc[0]) if len(loc) > 1 else Config()
        names = owner.__dataclass_fields__ if is_pydantic_dataclass(type(owner)) else Config.model_fields
        known = ", ".join(sorted(n for n in names if not is_pydantic_dataclass(type(getattr(owner, n)))))
        return f"unknown config key {key!r} (known here: {known})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{key} must be {bounds[kind]} {limit}, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx['expected'].replace(chr(39), '').replace(' or ', ', ')}; got {value!r}"
    if kind == "value_error":  # a check across fields names them; a field's own check says what it wants
        return str(ctx["error"]) if len(loc) == 1 else f"{key} {ctx['error']}, got {value!r}"
    expects = _TYPE_NAMES.get(kind.split("_")[0])
    if expects and kind.endswith(("_type", "_parsing", "_from_float", "_fraction")):
        return f"config key {key!r} expects {expects}, got {value!r} ({error['msg']})"
    return f"config key {key!r}: {error['msg']}, got {value!r}"


def parse_set_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` arguments as the overrides :func:`load_config` takes (the last layer)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides
