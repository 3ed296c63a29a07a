"""A checkpoint's names as transformers' `from_pretrained` reads them for a model: renamed, converted or left alone."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


def transformers_names(
    model: nn.Module, stored: list[str], model_names: Collection[str]
) -> dict[str, tuple[str, bool]]:
    """{stored name: (the model name from_pretrained loads it as, whether a converter changes its data)}.

    Uses transformers' own rules (its conversion mapping, legacy renames included, and the base model's prefix
    added or stripped as it does); names it leaves alone are not listed. A converter merges, splits or
    transposes (Mixtral's per-expert w1/w3 into one `gate_up_proj`): its stored pieces are not the model's tensor.
    """
    known = dict.fromkeys(model_names, True)
    strangers = [name for name in stored if name not in known]
    if (
        not strangers
    ):  # the usual case: nothing to rename, and transformers' mapping is not even built
        return {}
    prefix = getattr(model, "base_model_prefix", None) or None
    rename: Callable[[str], tuple[str, str | None]]
    try:  # transformers >= 5; older ones, or a moved API, only add or strip the base model's prefix
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )

        transforms = get_model_conversion_mapping(cast("PreTrainedModel", model), add_legacy=True)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]

        def rename(name: str) -> tuple[str, str | None]:
            return rename_source_key(name, renamings, converters, prefix, known)
    except Exception:

        def rename(name: str) -> tuple[str, str | None]:
            return _with_prefix(name, prefix, known), None

    out: dict[str, tuple[str, bool]] = {}
    for name in strangers:
        try:
            new, pattern = rename(name)
        except Exception:  # a rule that fails on one odd key leaves that key as stored
            continue
        if new != name:
            out[name] = (new, pattern is not None)
    return out


def _with_prefix(name: str, prefix: str | None, known: Collection[str]) -> str:
    """`name` with the base model's prefix stripped or added where that names a model tensor."""
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in known:
        return name[len(prefix) + 1 :]
    if prefix and f"{prefix}.{name}" in known:
        return f"{prefix}.{name}"
    return name


def ignored_on_load(model: nn.Module, names: list[str]) -> set[str]:
    """The names transformers drops without a word when it loads this model (`_keys_to_ignore_on_load_unexpected`)."""
    patterns = []
    for pattern in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []:
        with contextlib.suppress(re.error, TypeError):
            patterns.append(re.compile(pattern))
    return {n for n in names if any(p.search(n) for p in patterns)}
