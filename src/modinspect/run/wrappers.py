"""Wrappers seen through: DDP's `module.`, torch.compile's `_orig_mod.`, FSDP1's `_fsdp_wrapped_module.`,
activation checkpointing's `_checkpoint_wrapped_module.` and FSDP2's `FSDP<Name>` classes, so that names and
types are those of the model the user wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Each wrapper's type name -> the attribute that holds the module it wraps.
WRAPPED = {
    "DistributedDataParallel": "module",
    "DataParallel": "module",
    "OptimizedModule": "_orig_mod",
    "FullyShardedDataParallel": "_fsdp_wrapped_module",
    "CheckpointWrapper": "_checkpoint_wrapped_module",
}

# Path components a wrapper inserts between the user's modules.
WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside DDP / DataParallel / torch.compile / FSDP1 / checkpoint wrappers."""
    for _ in range(16):
        attribute = WRAPPED.get(type(model).__name__)
        inner = getattr(model, attribute, None) if attribute is not None else None
        if inner is None:
            break
        model = inner
    return model


def is_wrapper(module: nn.Module) -> bool:
    """A wrapper inside the model (an FSDP1 unit, a checkpoint wrapper): its inner module carries the name."""
    return type(module).__name__ in (
        "FullyShardedDataParallel",
        "CheckpointWrapper",
        "OptimizedModule",
    )


def type_name(module: nn.Module) -> str:
    """The class the user wrote: FSDP2's fully_shard swaps a module's class for `FSDP<Name>`, a subclass of it."""
    cls = type(module)
    mro = cls.__mro__
    if (
        len(mro) > 2
        and mro[1].__name__ == "FSDPModule"
        and cls.__name__ == "FSDP" + mro[2].__name__
    ):
        return mro[2].__name__
    return cls.__name__


def normalise(name: str) -> str:
    """`layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp` -> `layers.0.mlp`."""
    if not any(part in name for part in WRAPPER_PARTS):
        return name
    return ".".join(p for p in name.split(".") if p not in WRAPPER_PARTS)


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(normalised name, module) of the user's modules, wrappers left out."""
    return [(normalise(n), m) for n, m in unwrap(model).named_modules() if not is_wrapper(m)]


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(normalise(n), p) for n, p in unwrap(model).named_parameters()]
