"""doctor's checks on a live module that need no forward pass: registration, modes, initial values.

Each function takes the model (and what it needs) and returns a list of Findings; nothing here runs the model.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from modinspect.names import short_path
from modinspect.reports.doctor import CATALOG, Finding, Location, Severity

if TYPE_CHECKING:
    import torch
    from torch import nn

MAX_CONTAINER_ITEMS = (
    10_000  # a plain list longer than this is data, not layers: look at its head only
)


def finding(
    check: str,
    severity: Severity,
    where: Location,
    message: str,
    fix: str | None = None,
    detail: str | None = None,
) -> Finding:
    return Finding(check, severity, where, message, fix or CATALOG[check].fix, detail)


def stateful(module: nn.Module) -> bool:
    """Holds a parameter or a buffer, or behaves differently in train and eval mode (Dropout, BatchNorm)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    if isinstance(module, _DropoutNd | _BatchNorm):
        return True
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def mode_sensitive(module: nn.Module) -> bool:
    """Its output depends on .training: Dropout, BatchNorm, or a forward that reads self.training."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    if isinstance(module, _DropoutNd):
        return float(getattr(module, "p", 0.0)) > 0.0
    if isinstance(module, _BatchNorm):
        return True
    code = getattr(getattr(type(module).forward, "__code__", None), "co_names", ())
    return "training" in code and not type(module).__module__.startswith("torch.")


def _items(value: Any, depth: int = 0) -> list[Any]:
    """The items of a plain container, and of plain containers inside it (three levels, bounded)."""
    items = list(value.values() if isinstance(value, dict) else value)[:MAX_CONTAINER_ITEMS]
    if depth >= 2:
        return items
    out: list[Any] = []
    for item in items:
        out.extend(_items(item, depth + 1) if type(item) in (list, tuple, dict) else [item])
    return out[:MAX_CONTAINER_ITEMS]


def registration_findings(model: nn.Module) -> list[Finding]:
    """Plain containers of modules/parameters/tensors, and tensors as plain attributes."""
    import torch
    from torch import nn

    modules = {id(m) for m in model.modules()}
    tensors = {id(t) for t in [*model.parameters(), *model.buffers()]}
    out: list[Finding] = []
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                continue
            where = Location(path, attr)
            if type(value) in (list, tuple, dict):
                f = _container_finding(value, where, modules, tensors)
                if f is not None:
                    out.append(f)
            elif (
                isinstance(value, torch.Tensor)
                and not isinstance(value, nn.Parameter)
                and id(value) not in tensors
            ):
                if attr.startswith("__"):
                    continue
                out.append(
                    finding(
                        "tensor-attribute",
                        "warning",
                        where,
                        f"{where.describe()} is a plain tensor attribute {tuple(value.shape)}: .to() does "
                        "not move it and state_dict() does not save it",
                        f"self.register_buffer({attr!r}, tensor) (persistent=False if it should not be saved)",
                    )
                )
    return out


def _container_finding(
    value: Any, where: Location, modules: set[int], tensors: set[int]
) -> Finding | None:
    import torch
    from torch import nn

    loose_params, loose_tensors, stateful_mods, stateless_mods = 0, 0, 0, 0
    for item in _items(value):
        if isinstance(item, nn.Module):
            if id(item) in modules:
                continue  # a reference to a registered module (hook taps): nothing lost
            if stateful(item):
                stateful_mods += 1
            else:
                stateless_mods += 1
        elif isinstance(item, nn.Parameter):
            loose_params += id(item) not in tensors
        elif isinstance(item, torch.Tensor):
            loose_tensors += id(item) not in tensors
    kind = type(value).__name__
    if stateful_mods or loose_params:
        what = (
            f"{stateful_mods} module(s) with parameters, buffers or a mode"
            if stateful_mods
            else f"{loose_params} nn.Parameter(s)"
        )
        return finding(
            "unregistered-container",
            "error",
            where,
            f"{where.describe()} is a plain {kind} holding {what}: parameters(), state_dict(), .to() "
            "and the optimizer do not see them",
            _container_fix(kind, bool(stateful_mods)),
        )
    if loose_tensors:
        return finding(
            "unregistered-container",
            "warning",
            where,
            f"{where.describe()} is a plain {kind} holding {loose_tensors} tensor(s): state_dict() and "
            ".to() miss them",
            "register each tensor with self.register_buffer(name, tensor)",
        )
    if stateless_mods:
        return finding(
            "unregistered-container",
            "info",
            where,
            f"{where.describe()} is a plain {kind} of {stateless_mods} stateless module(s): nothing to "
            "train or save, but hooks and print(model) do not see them",
            _container_fix(kind, True),
        )
    return None


def _container_fix(kind: str, modules: bool) -> str:
    if not modules:
        return "use nn.ParameterList / nn.ParameterDict"
    return "use nn.ModuleDict" if kind == "dict" else "use nn.ModuleList"


def _code_objects(code: Any) -> Iterator[Any]:
    yield code
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from _code_objects(const)


def global_tensor_findings(model: nn.Module) -> list[tuple[Finding, torch.Tensor]]:
    """Module-level tensors that a module's forward names (once per class and name), with the tensor: the
    forward pass confirms that it is used (a branch not taken is no finding)."""
    import torch

    owned = {id(t) for t in [*model.parameters(), *model.buffers()]}
    seen: set[tuple[type, str]] = set()
    out: list[tuple[Finding, torch.Tensor]] = []
    for path, module in model.named_modules():
        forward = inspect.unwrap(type(module).forward)
        code = getattr(forward, "__code__", None)
        if code is None or type(module).__module__.startswith("torch."):
            continue
        globals_ = getattr(forward, "__globals__", {})
        for c in _code_objects(code):
            for name in c.co_names:
                value = globals_.get(name)
                if (
                    not isinstance(value, torch.Tensor)
                    or id(value) in owned
                    or (type(module), name) in seen
                ):
                    continue
                seen.add((type(module), name))
                line = _name_line(forward, name)
                out.append(
                    (
                        finding(
                            "global-tensor-in-forward",
                            "warning",
                            Location(path, name, file=short_path(code.co_filename), line=line),
                            f"{type(module).__name__}.forward uses the module-level tensor {name} "
                            f"{tuple(value.shape)}: the model does not own it, so .to() does not move it "
                            "and state_dict() does not save it",
                            f"self.register_buffer({name.lower()!r}, {name}.clone()) in __init__, and use "
                            "the buffer",
                        ),
                        value,
                    )
                )
    return out


def _name_line(function: Any, name: str) -> int | None:
    """The first line of `function` that loads `name`."""
    import dis

    try:
        for ins in dis.get_instructions(function):
            if (
                ins.argval == name
                and ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")
                and ins.positions is not None
            ):
                return ins.positions.lineno
    except TypeError:
        return None
    return None


def assigned_twice_findings(model: nn.Module) -> list[Finding]:
    """`self.X = Module(...)` twice in one block of an __init__, X a registered submodule: the first is lost."""
    out: list[Finding] = []
    done: set[type] = set()
    for path, module in model.named_modules():
        for cls in type(module).__mro__:
            if (
                cls in done
                or "__init__" not in vars(cls)
                or cls.__module__.startswith(("torch.", "builtins"))
            ):
                continue
            done.add(cls)
            for attr, line, file in _double_assignments(cls):
                if attr in module._modules:
                    out.append(
                        finding(
                            "module-assigned-twice",
                            "warning",
                            Location(path, attr, file=short_path(file), line=line),
                            f"{cls.__name__}.__init__ assigns a new module to self.{attr} twice: the first "
                            "is discarded and the second one is used wherever self."
                            f"{attr} appears",
                            None,
                        )
                    )
    return out


def _double_assignments(cls: type) -> list[tuple[str, int, str]]:
    init = vars(cls)["__init__"]
    try:
        lines, start = inspect.getsourcelines(init)
        file = inspect.getsourcefile(init) or "?"
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return []
    func = tree.body[0] if tree.body and isinstance(tree.body[0], ast.FunctionDef) else None
    if func is None:
        return []
    out: list[tuple[str, int, str]] = []

    def visit(block: list[ast.stmt]) -> None:
        first: dict[str, int] = {}
        for stmt in block:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
                for target in stmt.targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    ):
                        if target.attr in first and not _mentions(stmt.value, target.attr):
                            out.append((target.attr, start + stmt.lineno - 1, file))
                        first[target.attr] = stmt.lineno
            for child in ("body", "orelse", "finalbody"):
                inner = getattr(stmt, child, None)
                if (
                    isinstance(inner, list)
                    and inner
                    and isinstance(inner[0], ast.stmt)
                    and stmt is not func
                ):
                    visit(inner)

    visit(func.body)
    return out


def _mentions(node: ast.AST, attr: str) -> bool:
    """`self.<attr>` appears in `node`: `self.fc = weight_norm(self.fc)` wraps the first module, not drops it."""
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == attr
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
        for n in ast.walk(node)
    )


def mode_findings(model: nn.Module, context: str) -> list[Finding]:
    """Training mode where the caller says inference; eval-mode parts of a model that trains."""
    out: list[Finding] = []
    named = list(model.named_modules())
    if context == "inference":
        training = [(p, m) for p, m in named if m.training and mode_sensitive(m)]
        for path, m in training:
            out.append(
                finding(
                    "train-mode-at-inference",
                    "warning",
                    Location(path),
                    f"{path or '<root>'} ({type(m).__name__}) is in training mode at inference: "
                    + (
                        "it drops activations at random"
                        if "Dropout" in type(m).__name__
                        else "its output depends on the batch"
                    ),
                    None,
                )
            )
        if not training and any(m.training for _, m in named):
            out.append(
                finding(
                    "train-mode-at-inference",
                    "info",
                    Location(""),
                    "the model is in training mode at inference; no module in it behaves differently "
                    "(no Dropout or BatchNorm), so the outputs are unaffected",
                    None,
                )
            )
        return out
    # training: the topmost eval-mode modules below a training parent
    parents = {p: m for p, m in named}
    for path, m in named:
        if m.training or not path:
            continue
        parent = parents[path.rpartition(".")[0]] if "." in path else model
        if not parent.training:
            continue
        sensitive = [s for s in m.modules() if mode_sensitive(s)]
        if not sensitive:
            continue
        frozen = all(not p.requires_grad for p in m.parameters())
        severity: Severity = "info" if frozen else "warning"
        tail = (
            ": frozen, so this is likely on purpose"
            if frozen
            else f": its {type(sensitive[0]).__name__} does not behave as in training"
        )
        out.append(
            finding(
                "mixed-train-eval",
                severity,
                Location(path),
                f"{path} ({type(m).__name__}) is in eval mode while the model trains{tail}",
                None,
            )
        )
    return out


def value_findings(model: nn.Module) -> list[Finding]:
    """One aminmax pass over every floating parameter and buffer: NaN/Inf (an error), and weight matrices
    whose elements are all one value (non-zero: a warning; zero, as a zero-initialised branch: an info)."""
    import torch
    from torch.nn.parameter import is_lazy

    out: list[Finding] = []
    params = {id(p) for p in model.parameters()}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if is_lazy(t) or t.device.type == "meta" or not t.is_floating_point() or t.numel() == 0:
            continue
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))
        module, _, attr = name.rpartition(".")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(t.detach())).sum())
            out.append(
                finding(
                    "nonfinite-weights",
                    "error",
                    Location(module, attr),
                    f"{name} holds {bad:,} NaN/Inf value(s)",
                    None,
                )
            )
            continue
        if lo != hi or id(t) not in params or sum(d > 1 for d in t.shape) < 2:
            continue
        if lo == 0.0:
            out.append(
                finding(
                    "constant-init",
                    "info",
                    Location(module, attr),
                    f"{name} {tuple(t.shape)} is all zeros: fine for a zero-initialised residual branch "
                    "or LoRA's B, a symmetry problem otherwise",
                    None,
                )
            )
        else:
            out.append(
                finding(
                    "constant-init",
                    "warning",
                    Location(module, attr),
                    f"{name} {tuple(t.shape)} is {lo:g} everywhere: every unit computes the same "
                    "thing and gets the same gradient, so they never differ",
                    None,
                )
            )
    return out


def optimizer_findings(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Finding]:
    """Trainable parameters that are in no param group of `optimizer`."""
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    out: list[Finding] = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in given:
            module, _, attr = name.rpartition(".")
            out.append(
                finding(
                    "param-not-in-optimizer",
                    "error",
                    Location(module, attr),
                    f"requires grad but is in none of the optimizer's {len(optimizer.param_groups)} "
                    "param group(s): optimizer.step() never changes it",
                    None,
                )
            )
    return out
