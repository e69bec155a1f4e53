"""The input contract: which raw columns a run needs, built from ``data.user_features``/``data.item_features``.

Interactions need only ``user_id``, ``item_id`` (integers) and ``click`` (0/1); each declared user or item
feature is one more column: integer-coded categorical, continuous (``name:continuous``, any number) or
multi-valued categorical (``name:multi``, a list of integer codes per row, e.g. a movie's genres).
``aliccp`` names Ali-CCP's 14 feature columns (the planted and ``merlin`` sources); an empty declaration
means ids only. See ``docs/input-data.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import ConfigError, DataConfig

ALICCP_USER_FEATURES = (
    "user_shops",
    "user_profile",
    "user_group",
    "user_gender",
    "user_age",
    "user_consumption_2",
    "user_is_occupied",
    "user_geography",
    "user_intentions",
    "user_brands",
    "user_categories",
)
ALICCP_ITEM_FEATURES = ("item_category", "item_shop", "item_brand")
ALICCP = "aliccp"
ID_COLUMNS = ("user_id", "item_id")
TARGET = "click"
RESERVED = frozenset({*ID_COLUMNS, TARGET, "user_id_raw", "item_id_raw", "timestamp", "rating", "weight"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KINDS = ("categorical", "continuous", "multi")


@dataclass(frozen=True)
class InputContract:
    """The raw columns of one run: ids, the click label and the declared categorical, continuous and
    multi-valued features."""

    user_features: tuple[str, ...]
    """Categorical user features (integer codes; NVTabular's Categorify, one embedding each)."""
    item_features: tuple[str, ...]
    user_continuous: tuple[str, ...] = ()
    """Continuous user features (numbers; NVTabular's Normalize, Merlin's CONTINUOUS tag)."""
    item_continuous: tuple[str, ...] = ()
    user_multi: tuple[str, ...] = ()
    """Multi-valued categorical user features (a list of integer codes per row; Categorify on the list, one
    embedding table each, averaged over the row's values in both models)."""
    item_multi: tuple[str, ...] = ()

    @property
    def raw_columns(self) -> dict[str, str]:
        """Every required raw column with the dtype kind it must have: ``i`` integer, ``f`` any number,
        ``l`` a non-empty list of integers."""
        names = [*ID_COLUMNS, *self.item_features, *self.user_features, TARGET]
        return {**dict.fromkeys(names, "i"), **dict.fromkeys([*self.user_continuous, *self.item_continuous], "f"),
                **dict.fromkeys([*self.user_multi, *self.item_multi], "l")}

    def describe(self) -> dict[str, list[str]]:
        described = {"user_features": list(self.user_features), "item_features": list(self.item_features)}
        if self.user_continuous or self.item_continuous:
            described.update(user_continuous=list(self.user_continuous), item_continuous=list(self.item_continuous))
        if self.user_multi or self.item_multi:
            described.update(user_multi=list(self.user_multi), item_multi=list(self.item_multi))
        return described


def declared_features(value: str, preset: tuple[str, ...],
                      key: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``aliccp`` -> the preset; ``""`` -> none; ``"a,b,c:continuous,d:multi"`` -> ``(("a", "b"), ("c",), ("d",))``:
    the categorical, the continuous and the multi-valued categorical columns (``:categorical`` may be written
    too); refuses bad or reserved names."""
    if value.strip() == ALICCP:
        return preset, (), ()
    by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for entry in (v.strip() for v in value.split(",") if v.strip()):
        name, _, kind = entry.partition(":")
        if kind not in ("", *KINDS):
            raise ConfigError(f"{key}: {entry!r} declares the kind {kind!r}; known kinds: {', '.join(KINDS)}")
        if not _NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a column name (letters, digits and _ only)")
        if name in RESERVED:
            raise ConfigError(f"{key}: {name!r} is a reserved column ({', '.join(sorted(RESERVED))}), not a feature")
        by_kind[kind or "categorical"].append(name)
    names = [name for kind in KINDS for name in by_kind[kind]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: a feature is declared twice in {value!r}")
    return tuple(by_kind["categorical"]), tuple(by_kind["continuous"]), tuple(by_kind["multi"])


def input_contract(settings: DataConfig) -> InputContract:
    """The contract ``settings`` declares; a column declared as both a user and an item feature is refused."""
    users, user_continuous, user_multi = declared_features(settings.user_features, ALICCP_USER_FEATURES,
                                                           "data.user_features")
    items, item_continuous, item_multi = declared_features(settings.item_features, ALICCP_ITEM_FEATURES,
                                                           "data.item_features")
    both = sorted(set(users + user_continuous + user_multi) & set(items + item_continuous + item_multi))
    if both:
        raise ConfigError(f"data.user_features and data.item_features both declare {both}")
    return InputContract(user_features=users, item_features=items, user_continuous=user_continuous,
                         item_continuous=item_continuous, user_multi=user_multi, item_multi=item_multi)


ALICCP_CONTRACT = InputContract(ALICCP_USER_FEATURES, ALICCP_ITEM_FEATURES)
