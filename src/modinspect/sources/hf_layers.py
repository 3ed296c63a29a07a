"""How many layers a Hugging Face config.json asks for, counted before anything is built, and the bound on them."""

from __future__ import annotations

import re
from typing import Any

from modinspect.errors import ModelTooLargeError

CONFIG_NAME = "config.json"
# Layers a config.json may ask for before the model is built (--max-layers raises it). Building costs a few ms of
# CPU per layer, more with its submodules: 100,000 layers take minutes. The largest published models have
# under 200 layers (Llama 3.1 405B: 126), encoder and decoder counted together.
DEFAULT_MAX_LAYERS = 512
# Config keys that count layers: num_hidden_layers, n_layer, n_layers, num_layers, num_encoder_layers,
# encoder_layers, decoder_layers, in the config or any config nested in it (text_config, vision_config, ...).
_PLAIN_KEY = re.compile(r"[\w-]{1,64}", re.ASCII)
_LAYER_KEY = re.compile(r"(?:num|n)_(?:\w+_)?layers?|(?:encoder|decoder)_layers")


def count_layers(config: dict[str, Any]) -> tuple[int, str, int]:
    """The layers `config` asks for, summed over it and the configs nested in it; the key that asks most, and how many.

    The key's path is for an error line: a part that is not a plain name (a key from the file) shows as `…`.
    """
    total, largest, where = 0, 0, ""
    stack: list[tuple[str, object]] = [("", config)]
    while stack:
        path, node = stack.pop()
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, value in items:
            part = str(key) if _PLAIN_KEY.fullmatch(str(key)) else "…"
            here = f"{path}.{part}" if path else part
            if isinstance(value, dict | list):
                stack.append((here, value))
            elif (
                isinstance(key, str)
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value > 0
                and _LAYER_KEY.fullmatch(key)
            ):
                total += value
                if value > largest:
                    largest, where = value, here
    return total, where, largest


def check_layers(config: dict[str, Any], label: str, max_layers: int) -> None:
    """Refuse, before anything is built, a config whose layers would take minutes to build (ModelTooLargeError)."""
    layers, where, largest = count_layers(config)
    if layers <= max_layers:
        return
    if layers > 10**9:  # no model has that many; no bound should be raised to build it
        raise ModelTooLargeError(
            f"{label}/{CONFIG_NAME} asks for more than 10^9 layers ({where}: "
            f"{_clip(largest)}); no model has that many"
        )
    raise ModelTooLargeError(
        f"{label}/{CONFIG_NAME} asks for {layers:,} layers ({where}: {largest}), more than --max-layers allows "
        f"({max_layers:,}); building them could take minutes: pass --max-layers {layers} to build it anyway"
    )


def _clip(number: int) -> str:
    """`number` in at most 20 characters."""
    text = str(number)
    return text if len(text) <= 20 else f"{text[:8]}…({len(text)} digits)"
