"""Hints for checkpoints whose keys follow another library's layout: PEFT adapters, transformers' legacy keys.

Each function looks at the keys a load plan left missing and unexpected, and returns one line that
names the cause and, where a key mapping fixes it, the flag; or None.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

LEGACY_LAYOUT = "this checkpoint uses transformers' legacy key layout; from_pretrained converts it"

# PEFT saves adapter tensors without the adapter's name: `lora_A.default.weight` is stored as `lora_A.weight`.
_PEFT_OWNED = r"lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector"
_PEFT_IN_MODEL = re.compile(rf"\.(?:{_PEFT_OWNED})\.([^.]+)(?:\.|$)")
PEFT_SAVED = rf"\.({_PEFT_OWNED})(\.|$)"


def peft_adapter_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
    """The --rename that inserts the adapter name into PEFT's saved keys, when it makes them match."""
    names = Counter(m.group(1) for key in missing if (m := _PEFT_IN_MODEL.search(key)))
    if not names or not unexpected:
        return None
    adapter = names.most_common(1)[0][0]
    repl = rf".\1.{adapter}\2"
    wanted = set(missing)
    hits = sum(1 for key in unexpected if re.sub(PEFT_SAVED, repl, key) in wanted)
    if not hits:
        return None
    return (
        f"{hits} checkpoint keys are a PEFT adapter saved without its adapter name: they match the model once "
        f"'{adapter}' is inserted (lora_A.weight -> lora_A.{adapter}.weight): pass --rename '{PEFT_SAVED}={repl}'"
    )


def legacy_layout_hint(module: nn.Module | None, unexpected: Sequence[str]) -> str | None:
    """When most unexpected keys are ones transformers' conversion mapping renames for this model, say so."""
    if module is None or not unexpected or not type(module).__module__.startswith("transformers."):
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping

        transforms = get_model_conversion_mapping(cast("PreTrainedModel", module), add_legacy=True)
    except (
        Exception
    ):  # transformers < 5 has no conversion mapping; a moved API must not break a load
        return None
    patterns = [
        t.compiled_sources for t in transforms if getattr(t, "compiled_sources", None) is not None
    ]
    hits = [key for key in unexpected if any(p.search(key) for p in patterns)]
    if not hits or len(hits) * 2 < len(unexpected):
        return None
    return (
        f"{len(hits)} of {len(unexpected)} unexpected keys (e.g. {hits[0]}) are ones transformers renames when it "
        f"loads a {type(module).__name__}: {LEGACY_LAYOUT}"
    )


def layout_hints(
    missing: Sequence[str], unexpected: Sequence[str], module: nn.Module | None = None
) -> list[str]:
    """Every hint that applies, most specific first."""
    found = [legacy_layout_hint(module, unexpected), peft_adapter_hint(missing, unexpected)]
    return [h for h in found if h is not None]
