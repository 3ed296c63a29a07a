"""A live nn.Module (from an entry point, a TorchScript archive or an unsafe pickle) as a Source."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from modinspect import dtypes
from modinspect.errors import UsageError
from modinspect.sources.base import ModuleInfo, Source, SubclassInfo, TensorInfo

if TYPE_CHECKING:
    import torch
    from torch import nn


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def storage_key(t: torch.Tensor) -> str | None:
    """Equal keys mean the same data. Meta tensors have no address: tied ones are the same object."""
    if t.numel() == 0:
        return None
    if t.device.type == "meta":
        return f"obj{id(t)}"
    return f"{t.device}:{t.untyped_storage().data_ptr()}@{t.storage_offset()}:{tuple(t.shape)}:{t.stride()}:{t.dtype}"


def shares_storage(model: nn.Module, a: str, b: str) -> bool:
    """Whether `model`'s tensors (parameters or buffers) `a` and `b` lie in one storage, one a view of the other.

    Compares the storages themselves, so it holds on the meta device too, where no tensor has an address.
    """
    found = {}
    for name, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        if name in (a, b):
            found[name] = t
    if len(found) != len({a, b}):
        return False
    return bool(found[a].untyped_storage()._cdata == found[b].untyped_storage()._cdata)


def module_type(mod: nn.Module) -> str:
    # ScriptModules keep the Python class name in original_name.
    return str(getattr(mod, "original_name", None) or type(mod).__name__)


def module_tensor_infos(model: nn.Module) -> list[TensorInfo]:
    """Parameters and buffers under every name they have, in state_dict order."""
    infos: list[TensorInfo] = []
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        non_persistent = getattr(mod, "_non_persistent_buffers_set", None)
        for name, p in mod.named_parameters(recurse=False):
            infos.append(_info(prefix + name, p, "parameter", requires_grad=p.requires_grad))
        for name, b in mod.named_buffers(recurse=False):
            persistent = None if non_persistent is None else name not in non_persistent
            infos.append(_info(prefix + name, b, "buffer", persistent=persistent))
        if has_own_state(mod):
            infos += _own_state_infos(mod, prefix, {i.name for i in infos})
    return infos


def has_own_state(mod: nn.Module) -> bool:
    """Whether a module saves more than its parameters and buffers: torch.ao's quantized modules' packed params."""
    from torch import nn

    return type(mod)._save_to_state_dict is not nn.Module._save_to_state_dict


def _own_state_infos(mod: nn.Module, prefix: str, known: set[str]) -> list[TensorInfo]:
    """The tensors a module's own `_save_to_state_dict` adds, named as a checkpoint of its state_dict lists them.

    torch.ao's quantized Linear saves `scale` and `zero_point` as new tensors and its packed params as a
    (weight, bias) tuple, which a saved state dict's reader lists as `_packed_params._packed_params.0` and `.1`;
    its convolutions save their packed params unpacked, as a quantized `weight` and a Parameter `bias`.
    """
    import torch

    state: dict[str, Any] = {}
    mod._save_to_state_dict(state, prefix, True)
    infos = []
    for name, value in state.items():
        if name in known:
            continue
        if isinstance(value, torch.Tensor) and (
            value.is_quantized or isinstance(value, torch.nn.Parameter)
        ):  # a quantized convolution's unpacked weight and bias
            infos.append(_info(name, value, "parameter", requires_grad=value.requires_grad))
        elif isinstance(value, torch.Tensor):
            infos.append(_info(name, value, "buffer", persistent=True))
        elif isinstance(value, tuple):  # packed params: their weight and bias
            infos += [
                _info(f"{name}.{i}", v, "parameter", requires_grad=False)
                for i, v in enumerate(value)
                if isinstance(v, torch.Tensor)
            ]
    return infos


def _info(
    name: str,
    t: torch.Tensor,
    kind: Any,
    requires_grad: bool | None = None,
    persistent: bool | None = None,
) -> TensorInfo:
    sub = subclass_info(t)
    if (
        sub is not None
    ):  # torchao's quantized weights: described by their inner tensors, as a pickle's
        inner = getattr(t, sub.parts[0][0])
        return TensorInfo(
            name=name,
            shape=tuple(t.shape),
            dtype=sub.parts[0][2],
            nbytes=sum(dtypes.nbytes(d, math.prod(s), unknown_bits=8) for _, s, d in sub.parts),
            kind=kind,
            storage=storage_key(inner),
            requires_grad=requires_grad,
            persistent=persistent,
            subclass=sub,
        )
    dtype = dtype_name(t.dtype)
    return TensorInfo(
        name=name,
        shape=tuple(t.shape),
        dtype=dtype,
        nbytes=dtypes.nbytes(dtype, t.numel(), unknown_bits=8) + qparams_bytes(t),
        kind=kind,
        storage=storage_key(t),
        requires_grad=requires_grad,
        persistent=persistent,
        qscheme=str(t.qscheme()).removeprefix("torch.") if t.is_quantized else None,
    )


def subclass_info(t: torch.Tensor) -> SubclassInfo | None:
    """A wrapper tensor subclass's (torchao's) inner tensors, as `__tensor_flatten__` names them; None for a
    plain tensor, or a subclass with no plain inner tensor."""
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(t):
        return None
    names, _ = t.__tensor_flatten__()
    parts = []
    for attr in names:
        inner = getattr(t, attr, None)
        if isinstance(inner, torch.Tensor) and not is_traceable_wrapper_subclass(inner):
            parts.append((attr, tuple(inner.shape), dtype_name(inner.dtype)))
    if not parts:
        return None
    block = getattr(t, "block_size", None)
    target = getattr(t, "target_dtype", None)
    kind = type(t)
    return SubclassInfo(
        f"{kind.__module__}.{kind.__qualname__}",
        tuple(parts),
        tuple(block)
        if isinstance(block, tuple | list) and all(type(b) is int for b in block)
        else None,
        any(
            getattr(t, k, None) is not None for k in ("act_quant_kwargs", "activation_quantization")
        ),
        dtype_name(t.dtype),
        dtype_name(target) if isinstance(target, torch.dtype) else None,
    )


def qparams_bytes(t: torch.Tensor) -> int:
    """The bytes of a per-channel quantized tensor's scales and zero points (0 for any other tensor)."""
    import torch

    if not t.is_quantized or t.qscheme() not in (
        torch.per_channel_affine,
        torch.per_channel_symmetric,
        torch.per_channel_affine_float_qparams,
    ):
        return 0
    scales, zeros = t.q_per_channel_scales(), t.q_per_channel_zero_points()
    return scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()


def module_infos(model: nn.Module) -> list[ModuleInfo]:
    return [
        ModuleInfo(name=name, type=module_type(mod), training=bool(mod.training))
        for name, mod in model.named_modules(remove_duplicate=False)
    ]


class ModuleSource(Source):
    """Tensors are the module's own; reading one returns a detached CPU copy."""

    module: nn.Module  # always the module it was opened from

    def __init__(
        self,
        model: nn.Module,
        label: str,
        fmt: str,
        notes: list[str] | None = None,
        import_path: str | None = None,
    ) -> None:
        super().__init__(
            label=label,
            format=fmt,
            tensors=module_tensor_infos(model),
            modules=module_infos(model),
            module=model,
            notes=list(notes or []),
        )
        self._submodules: dict[str, Any] | None = None
        # An entry point's folder: its model may import siblings lazily (in forward), so it goes back on
        # sys.path while the model runs (see `in_use`).
        self.import_path = import_path
        # Weights opened by a reader for the run layer to load into the model (run.source.open_source).
        self.pending_weights: Source | None = None

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Put the model's own folder on sys.path for the duration (no-op for a model without one)."""
        if self.import_path is None:
            yield
            return
        sys.path.insert(0, self.import_path)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(self.import_path)

    def refresh(self) -> None:
        """Re-read tensor metadata after the module changed (e.g. weights were loaded)."""
        self.tensors = module_tensor_infos(self.module)
        self._by_name = {t.name: t for t in self.tensors}
        self._submodules = None

    def _read(self, name: str) -> torch.Tensor:
        owner, _, attr = name.rpartition(".")
        if self._submodules is None:  # not get_submodule: ScriptModules do not support it
            self._submodules = dict(self.module.named_modules(remove_duplicate=False))
        t: torch.Tensor = getattr(self._submodules[owner], attr)
        if t.device.type == "meta":
            raise UsageError(
                f"{self.label}: {name} is on the meta device and has no data; drop --meta to read it"
            )
        return t.detach().cpu()
