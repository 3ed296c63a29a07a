"""Planted mistakes for `modinspect doctor` (issue 24): test data, not tests.

For every check doctor will run, one or more `Planted` cases: a small model (or, for the checks on a
checkpoint without code, a state dict) that contains exactly that mistake, and its correct twin that
does not. `NEAR_MISSES` are look-alikes that must not be flagged (or only as an info, where the info is
true), and `CLEAN_MODELS` are real architectures that must produce no warning or error at all.

tests/test_doctor_corpus.py proves with torch alone (never with modinspect) that every planted model
really has its mistake and every twin does not, so doctor's own tests can lean on this file:

    for case in PLANTED:                      # live modules, custom autograd Functions included
        model = case.planted()
        report = modinspect.doctor(model, case.example_input(), context=case.context,
                                   optimizer=case.optimizer(model) if case.optimizer else None)
        # a finding (case.check, case.severity) at each of case.where
        # the twin: no finding with case.check at any severity
    for case in PLANTED_CHECKPOINTS:          # a state dict saved to tmp_path, read without code
        ...
    for near in NEAR_MISSES:                  # no finding with near.check above near.at_most
        ...
    for clean in CLEAN_MODELS:                # no warning, no error
        ...

Identifiers and severities are proposals for doctor: change them here and in doctor together. Every
builder returns a fresh object, seeded, so two calls give equal weights. Twins are clean beyond their own
check (one mode, a gradient for every trainable parameter, nothing stateful built per call, float64 works);
the test file proves that too. Save a checkpoint case with torch.save: safetensors' save_file refuses the
tied twin's shared storage (its save_model drops the alias instead).

Decisions on the grey zone (each a NEAR_MISSES entry with the most it may be reported as):
- frozen parameters (requires_grad=False) get no gradient by design: unused-parameter at most an info
  ("frozen"); leaving them out of the optimizer is no finding at all.
- log-softmax outputs: at most an info (right for NLLLoss, and CrossEntropyLoss of log-probabilities equals
  that of the logits); sigmoid outputs: at most an info (right for BCELoss); non-negative outputs whose rows
  do not sum to 1: nothing. Only a softmax's rows summing to 1 is a warning.
- stateless modules (no parameter, no buffer, not Dropout/BatchNorm) built in forward or held in a plain
  container lose nothing: at most an info. Real models do both: transformers' BERT and T5 build an
  nn.CrossEntropyLoss per call, Llama keeps its rotary `Func` wrapper in a plain dict (`_kernel_funcs`,
  from the `kernels` package). A Linear, a Parameter (error) or a Dropout (warning: it ignores eval())
  built per call is a finding.
- a zero-initialised weight matrix in a live model (zero-init residual, LoRA's B) is at most an info; the
  same non-zero constant in every layer is a warning. In a checkpoint, a constant matrix (2-D or more) is a
  warning; 1-D vectors (norms, biases) and scalars never are, nor equal 1-D vectors tied copies. The
  checkpoint checks on values (constant-tensor) are for weights read without code; on a live model at
  init, constant-init decides.
- mixed train/eval where the eval part is entirely frozen (a BatchNorm backbone kept fixed): at most an
  info; training mode in an inference context with no Dropout/BatchNorm: at most an info.
- torch.Size is a tuple of ints, not a container of tensors; a plain list of modules that an nn.ModuleList
  also registers (hook taps) loses nothing: neither is a finding.
- a module replaced after construction (`model.head = nn.Linear(...)`, the fine-tuning idiom), an alias
  under two names and weight tying are not module-assigned-twice: only a second assignment in __init__ is.
- the gradient-reversal layer is an error like any wrong backward, with its multiple (-0.1), and is
  silenced by declaring it (`--expect GradReverse=-0.1`); `intended=True` marks it.
- tied weights stored as two copies cost space only: an info.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

Severity = Literal["error", "warning", "info"]
Context = Literal["training", "inference"]  # what the caller declares the model is for
Batch = tuple[
    tuple[Any, ...], dict[str, Any]
]  # (args, kwargs), as modinspect's stats takes its inputs
StateDict = dict[str, torch.Tensor]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")  # in increasing order

# Every check doctor runs, with the one line it explains. Each has at least one planted case below.
CHECKS: dict[str, str] = {
    # on a live module: registration
    "unregistered-container": "modules, parameters or tensors held in a plain list/dict/tuple attribute",
    "tensor-attribute": "a tensor stored as a plain attribute, neither Parameter nor buffer",
    "global-tensor-in-forward": "forward uses a module-level tensor that the model does not own",
    "module-created-in-forward": "a module or Parameter built inside forward(), new on every call",
    "module-assigned-twice": "__init__ assigns a module to the same attribute twice; the first is discarded",
    # on a live module: one forward and backward
    "unused-parameter": "a parameter that requires grad got no gradient (never ran / output unused)",
    "param-not-in-optimizer": "a parameter that requires grad is in no param group of the optimizer",
    "probabilities-into-cross-entropy": "a classifier outputs probabilities; CrossEntropyLoss expects logits",
    "forward-bypasses-call": "a submodule's forward ran without its __call__ (hooks bypassed)",
    "train-mode-at-inference": "modules in training mode that change the output, where the caller says inference",
    "mixed-train-eval": "some modules in training mode and others in eval mode",
    "batchnorm-batch-of-one": "BatchNorm in training mode sees a batch of one",
    # custom torch.autograd.Function
    "autograd-function-wrong-backward": "backward disagrees with gradcheck (float64)",
    "autograd-function-gradient-count": "backward returns the wrong number of gradients",
    "autograd-function-ctx-tensor": "a tensor kept on ctx instead of ctx.save_for_backward",
    # initialisation
    "constant-init": "every weight of a layer is the same non-zero value: its units never differ",
    "activation-scale-with-depth": "activation scale grows or shrinks by orders of magnitude with depth",
    "dead-relu-at-init": "ReLU units that output zero for every example at init",
    # on a checkpoint without code
    "nonfinite-weights": "NaN or Inf in a stored tensor",
    "constant-tensor": "a stored weight matrix whose elements are all equal",
    "batchnorm-stats-untrained": "BatchNorm running_var <= 0, or statistics never updated",
    "tied-weights-stored-twice": "two keys hold equal copies of one weight in two storages",
    "mixed-dtypes-in-module": "one module's floating tensors are stored in different dtypes",
    "fp16-near-overflow": "float16 values within a factor 2 of 65,504",
}


@dataclass(frozen=True)
class Where:
    """Where a finding points: a module path ("" is the root), an attribute, a Function's class name."""

    module: str = ""
    # attribute, parameter or buffer name; a checkpoint key's last part; the name of a module-level tensor
    # (global-tensor-in-forward); the ctx attribute holding a tensor (autograd-function-ctx-tensor)
    attribute: str | None = None
    function: str | None = None  # a custom torch.autograd.Function's class name

    @property
    def key(self) -> str:
        """The dotted name: a state-dict key for a parameter, the module path otherwise."""
        return ".".join(p for p in (self.module, self.attribute) if p)


@dataclass(frozen=True)
class Planted:
    """A live model with exactly one kind of mistake, and its correct twin."""

    case: str  # unique: "<check>/<variant>"
    check: str
    severity: Severity
    where: tuple[Where, ...]  # one finding expected at each
    mistake: str  # the planted mistake in one line
    planted: Callable[[], nn.Module]
    twin: Callable[[], nn.Module]
    example_input: Callable[[], Batch]
    context: Context = "training"
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = (
        None  # param-not-in-optimizer only
    )
    twin_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    multiple: float | None = None  # wrong-backward: analytic gradient = multiple x the true one
    detail: str | None = None  # unused-parameter's classification: never-ran / output-unused
    intended: bool = False  # reportable, and silenced by declaring it (--expect Function=multiple)


@dataclass(frozen=True)
class PlantedCheckpoint:
    """A state dict with exactly one kind of mistake (read without the model's code), and its twin."""

    case: str
    check: str
    severity: Severity
    where: tuple[Where, ...]
    mistake: str
    planted: Callable[[], StateDict]
    twin: Callable[[], StateDict]


@dataclass(frozen=True)
class NearMiss:
    """Looks like `check`'s mistake and is not: no finding with `check` above `at_most` (None: none at all)."""

    case: str
    check: str
    at_most: Severity | None
    why: str
    build: Callable[[], nn.Module | StateDict]
    example_input: Callable[[], Batch] | None = None  # None for a state dict
    context: Context = "training"
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None


@dataclass(frozen=True)
class CleanModel:
    """A real architecture, small and random: doctor must report no warning and no error on it.

    Some run stateless modules outside their module tree (BERT and T5 build an nn.CrossEntropyLoss per
    call, Llama keeps a `Func` in the plain dict `_kernel_funcs`): module-created-in-forward and
    unregistered-container must stay below warning there.
    """

    name: str
    build: Callable[[], nn.Module]
    example_input: Callable[[], Batch]
    context: Context = "training"
    needs: str | None = None  # an optional package it is built with (the test skips without it)


def backward_loss(output: Any) -> torch.Tensor:
    """The scalar doctor runs backward on: the model's own `loss` if it returned one, else the sum of its
    floating outputs (modinspect stats' `--loss auto`)."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    tensors = [t for t in _tensors(output) if t.is_floating_point() and t.requires_grad]
    return torch.stack([t.float().sum() for t in tensors]).sum()


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _x(*shape: int, seed: int = 1) -> Callable[[], Batch]:
    """An example input builder: one seeded standard-normal tensor."""

    def build() -> Batch:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(*shape, generator=g),), {}

    return build


def _build(
    cls: Callable[..., nn.Module],
    *args: Any,
    mode: Literal["train", "eval"] = "train",
    **kwargs: Any,
) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        _seeded()
        model = cls(*args, **kwargs)
        return model.train(mode == "train")

    return build


# ====================================================================== registration


class ListOfLayers(nn.Module):
    """Three hidden layers in `self.layers`: a plain list (planted) or an nn.ModuleList (twin)."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        layers = [nn.Linear(8, 8) for _ in range(3)]
        self.layers: Any = nn.ModuleList(layers) if registered else layers
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


class Heads(nn.Module):
    def __init__(self, registered: bool) -> None:
        super().__init__()
        heads = {"cls": nn.Linear(8, 3), "box": nn.Linear(8, 4)}
        self.heads: Any = nn.ModuleDict(heads) if registered else heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.heads[name](x) for name in ("cls", "box")], dim=-1)


class TrunkAndHeads(nn.Module):
    """A trunk and a decoder whose two heads sit in a plain dict (planted) or an nn.ModuleDict (twin)."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 8)
        self.decoder = Heads(registered)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.trunk(x)))


class ListOfParameters(nn.Module):
    """Per-stage scales in a plain list of Parameters (planted) or an nn.ParameterList (twin)."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        scales = [nn.Parameter(torch.full((8,), 0.5 + i)) for i in range(2)]
        self.scales: Any = nn.ParameterList(scales) if registered else scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for scale in self.scales:
            x = self.fc(x) @ torch.diag(scale)
        return x


class TupleOfTensors(nn.Module):
    """Two anchor tensors in a plain tuple (planted) or two buffers (twin), multiplied in by matmul."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        anchors = (torch.linspace(-1, 1, 64).reshape(8, 8), torch.linspace(1, -1, 64).reshape(8, 8))
        self.registered = registered
        if registered:
            self.register_buffer("anchor0", anchors[0])
            self.register_buffer("anchor1", anchors[1])
        else:
            self.anchors = anchors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (self.anchor0, self.anchor1) if self.registered else self.anchors
        return self.fc(x) @ a @ b


class MaskAttribute(nn.Module):
    """A causal mask kept as a plain tensor attribute (planted) or a buffer (twin)."""

    def __init__(self, registered: bool, persistent: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        mask = torch.tril(torch.ones(8, 8))
        if registered:
            self.register_buffer("mask", mask, persistent=persistent)
        else:
            self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.mask


class Block(nn.Module):
    """`self.inner` holds the mistake so that its path is a nested one ("block")."""

    def __init__(self, inner: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.block = inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.relu(self.inp(x)))


# A module-level tensor that forward reads: the model does not own it, so .to() and state_dict() miss it.
PROJECTION = torch.linspace(-1.0, 1.0, 32).reshape(8, 4)


class GlobalProjection(nn.Module):
    def __init__(self, registered: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.registered = registered
        if registered:
            self.register_buffer("projection", PROJECTION.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.registered:
            return self.fc(x) @ self.projection
        return self.fc(x) @ PROJECTION


class LinearPerCall(nn.Module):
    """Planted: the projection is a new, random nn.Linear on every call."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.Linear(8, 8)(h)


class LinearOnce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


class ParameterPerCall(nn.Module):
    """Planted: a fresh random Parameter per call; it never trains and is never saved."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate = nn.Parameter(torch.randn(8) * 0.1)
        return h * gate


class ParameterOnce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.gate


class DropoutPerCall(nn.Module):
    """Planted: nn.Dropout built per call is always in training mode, whatever model.eval() said."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.Dropout(0.5)(h)


class DropoutOnce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(h)


class ReluPerCall(nn.Module):
    """Near-miss: a stateless nn.ReLU built per call computes the same thing every time."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.ReLU()(h)


class Lazy(nn.Module):
    """Near-miss: nn.LazyLinear materialises its parameters on the first call, by design, once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


class BlockAssignedTwice(nn.Module):
    """Planted: a copy-pasted line overwrites `self.block`; the first Linear is silently discarded."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.block = nn.Linear(8, 8)  # meant: self.block2
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.embed(x))
        x = torch.relu(self.block(x))
        return self.head(torch.relu(self.block(x)))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.block2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.embed(x))
        x = torch.relu(self.block(x))
        return self.head(torch.relu(self.block2(x)))


class SharedUnderTwoNames(nn.Module):
    """Near-miss: one module registered under two names (an alias), not one name assigned twice."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.decoder_input = self.encoder
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.decoder_input(torch.relu(self.encoder(x)))))


class WeightNormed(nn.Module):
    """Near-miss: `self.fc = weight_norm(self.fc)` assigns self.fc twice in __init__, and wraps (keeps) the first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.fc = nn.utils.parametrizations.weight_norm(self.fc)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


class TiedHead(nn.Module):
    """Near-miss: the head's weight replaced by the embedding's (weight tying), a Parameter reassigned."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(ids)))


class HeadReplacedAfterInit(nn.Module):
    """The fine-tuning idiom: `model.head = nn.Linear(...)` after construction (outside __init__)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def _head_replaced() -> nn.Module:
    _seeded()
    model = HeadReplacedAfterInit()
    model.head = nn.Linear(8, 3)
    return model


class PerLayerActivations(nn.Module):
    """Near-miss: stateless activations chosen per layer, in a plain list: nothing to train, save or move."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.acts = [nn.ReLU(), nn.GELU()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return x


class ConfigAttributes(nn.Module):
    """Near-miss: plain lists, tuples and dicts of ints, strings and floats, torch.Size (a tuple of ints)
    and dtype metadata, and a plain list of references to modules that an nn.ModuleList registers."""

    _no_split_modules: ClassVar[list[str]] = [
        "Linear"
    ]  # a class attribute of names, as Hugging Face models have

    def __init__(self) -> None:
        super().__init__()
        self.widths = [4, 8, 8]
        self.names = ("first", "second")
        self.options = {"dropout": 0.0, "act": "relu"}
        self.shape = torch.Size([8])
        self.dtype = torch.float32
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(self.widths, self.widths[1:], strict=False)
        )
        self.taps = [
            self.layers[0]
        ]  # forward hooks go here; its parameters are registered by self.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


# ====================================================================== one forward and backward


class WithAux(nn.Module):
    """`aux` never called (never-ran), called with its output dropped (output-unused), or used (twin)."""

    def __init__(self, use: Literal["never", "dropped", "used"]) -> None:
        super().__init__()
        self.use = use
        self.trunk = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.trunk(x))
        out = self.head(h)
        if self.use == "dropped":
            aux = self.aux(h)  # computed for a metric that is never returned
            del aux
        elif self.use == "used":
            out = out + self.aux(h)
        return out


def _frozen_aux() -> nn.Module:
    _seeded()
    model = WithAux("never")
    model.aux.requires_grad_(
        False
    )  # frozen, and unused on purpose (e.g. a teacher head kept for export)
    return model


class BackboneHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _frozen_backbone() -> nn.Module:
    _seeded()
    model = BackboneHead()
    model.backbone.requires_grad_(False)
    return model


def _sgd_backbone_only(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.get_submodule("backbone").parameters(), lr=0.1)


def _sgd_all(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


def _sgd_trainable(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)


def _adamw_no_decay_groups(model: nn.Module) -> torch.optim.Optimizer:
    """Two param groups (no weight decay on biases): every parameter is in one of them."""
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3)


class Classifier(nn.Module):
    """A 5-class classifier returning logits (twin), softmax, log-softmax or sigmoid of them."""

    def __init__(self, output: Literal["logits", "softmax", "log_softmax", "sigmoid"]) -> None:
        super().__init__()
        self.output = output
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc2(torch.relu(self.fc1(x)))
        if self.output == "softmax":
            return F.softmax(logits, dim=-1)
        if self.output == "log_softmax":
            return F.log_softmax(logits, dim=-1)
        if self.output == "sigmoid":
            return torch.sigmoid(logits)
        return logits


def _softmax_sequential() -> nn.Module:
    _seeded()
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 5), nn.Softmax(dim=1))


def _logits_sequential() -> nn.Module:
    _seeded()
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 5))


def _softplus_regressor() -> nn.Module:
    """Near-miss: non-negative outputs (predicted counts) whose rows do not sum to 1."""
    _seeded()
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softplus())


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class EncoderHead(nn.Module):
    """Calls `self.encoder.forward(x)` (planted: hooks bypassed) or `self.encoder(x)` (twin)."""

    def __init__(self, bypass: bool) -> None:
        super().__init__()
        self.bypass = bypass
        self.encoder = Encoder()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder.forward(x) if self.bypass else self.encoder(x)
        return self.head(h)


class ScaledSequential(nn.Sequential):
    """Near-miss: a module calling its own base class's forward (`super().forward`), not a submodule's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


def _scaled_sequential() -> nn.Module:
    _seeded()
    return ScaledSequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.fc(x))))


class TwoStages(nn.Module):
    """Two Linear-ReLU-Dropout stages; the planted copy has `stage2` left in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5))
        self.stage2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)))


def _stage2_eval() -> nn.Module:
    _seeded()
    model = TwoStages().train()
    model.stage2.eval()  # e.g. left over from an evaluation helper that only switched one part back
    return model


class ConvBNNet(nn.Module):
    """Conv, then BatchNorm2d, or GroupNorm (the twin that works with a batch of one)."""

    def __init__(self, norm: Literal["batch", "group"]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn: nn.Module = nn.BatchNorm2d(8) if norm == "batch" else nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class FrozenBNBackbone(nn.Module):
    """Near-miss: fine-tuning a head on a frozen backbone whose BatchNorm is kept in eval mode on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def _frozen_bn_backbone() -> nn.Module:
    _seeded()
    model = FrozenBNBackbone().train()
    model.backbone.requires_grad_(False)
    model.backbone.eval()
    return model


class LinearBN1d(nn.Module):
    def __init__(self, norm: Literal["batch", "layer"]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn: nn.Module = nn.BatchNorm1d(8) if norm == "batch" else nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(x))))


# ====================================================================== custom autograd Functions


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class HalfSquare(torch.autograd.Function):
    """Planted: d(x²)/dx written as x, half the true gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return x * grad


class Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class FlippedTanh(torch.autograd.Function):
    """Planted: a sign error, backward returns -1.0 x the true gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (y * y - 1)


class Sin(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x)


class WrongSin(torch.autograd.Function):
    """Planted: backward uses sin where cos belongs; no constant multiple explains it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sin(x)


class GradReverse(torch.autograd.Function):
    """The gradient-reversal layer (domain-adversarial training): identity forward, -λ x the gradient back.
    Intentionally "wrong" for gradcheck; doctor reports it unless declared (--expect GradReverse=-0.1)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


class Identity(torch.autograd.Function):
    """GradReverse's twin: the same layer without the reversal (what gradcheck accepts)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class ScaleBy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x * alpha

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.alpha, None


class ScaleByOneGradient(torch.autograd.Function):
    """Planted: forward takes (x, alpha); backward returns one gradient instead of two (x's and None)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x * alpha

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * ctx.alpha


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class CtxCube(torch.autograd.Function):
    """Planted: x kept as `ctx.x`: no version check (an in-place change after forward silently changes
    the gradient), and a reference cycle when it is an output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.x = x
        return x**3

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return 3 * ctx.x * ctx.x * grad


class FunctionLayer(nn.Module):
    """Applies `function` to a Linear's output; `extra` are the Function's non-tensor arguments."""

    def __init__(self, function: type[torch.autograd.Function], *extra: Any) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.function = function
        self.extra = extra

    def call_function(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x, *self.extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_function(self.fc(x))


class FunctionNet(nn.Module):
    """A Linear, the Function layer at `act`, a head: doctor finds the Function in the backward graph."""

    def __init__(self, function: type[torch.autograd.Function], *extra: Any) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.act = FunctionLayer(function, *extra)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(torch.relu(self.inp(x))))


def _function_net(function: type[torch.autograd.Function], *extra: Any) -> Callable[[], nn.Module]:
    return _build(FunctionNet, function, *extra)


# ====================================================================== initialisation


class MLP(nn.Module):
    def __init__(self, init: Literal["default", "constant"]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        if (
            init == "constant"
        ):  # an `_init_weights` that meant to use a small std and set a constant
            for layer in (self.fc1, self.fc2, self.out):
                nn.init.constant_(layer.weight, 0.05)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ResidualMLP(nn.Module):
    """Near-miss: the residual branch's last layer zero-initialised on purpose (as ResNet's
    zero_init_residual, adaLN-zero, LoRA's B): the block starts as the identity and still learns."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)  # weight all ones, bias all zeros: constant by design
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.down(torch.relu(self.up(self.norm(h))))
        return self.head(h)


class DeepMLP(nn.Module):
    """Eight Linear(64, 64)+ReLU layers in `self.layers`, weights N(0, std²) with zero biases; std=None:
    Kaiming (He) normal for ReLU, which keeps the activation scale."""

    def __init__(self, std: float | None) -> None:
        super().__init__()
        linears = [nn.Linear(64, 64) for _ in range(8)]
        self.layers = nn.Sequential(*[nn.Sequential(linear, nn.ReLU()) for linear in linears])
        for linear in linears:
            if std is None:
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            else:
                nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeadRelu(nn.Module):
    """A hidden layer whose bias is -5 (planted: every ReLU unit is off for every input) or default."""

    def __init__(self, dead: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 2)
        if dead:
            with torch.no_grad():
                self.fc.bias.fill_(-5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(x)))


# ====================================================================== the live cases

_IN4 = _x(6, 4)
_IN8 = _x(6, 8)
_IMG1 = _x(1, 3, 6, 6)
_VEC1 = _x(1, 4)


def _ids() -> Batch:
    return (torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1)),), {}


def _registered(
    cls: Callable[..., nn.Module],
) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module]]:
    return _build(cls, False), _build(cls, True)


PLANTED: tuple[Planted, ...] = (
    # ---------------------------------------------------------------- registration
    Planted(
        "unregistered-container/list-of-layers",
        "unregistered-container",
        "error",
        (Where("", "layers"),),
        "hidden layers kept in a plain list: not trained, not saved, not moved",
        *_registered(ListOfLayers),
        _IN8,
    ),
    Planted(
        "unregistered-container/dict-of-heads",
        "unregistered-container",
        "error",
        (Where("decoder", "heads"),),
        "two heads in a plain dict inside a submodule",
        *_registered(TrunkAndHeads),
        _IN4,
    ),
    Planted(
        "unregistered-container/list-of-parameters",
        "unregistered-container",
        "error",
        (Where("", "scales"),),
        "nn.Parameters in a plain list: parameters() and the optimizer miss them",
        *_registered(ListOfParameters),
        _IN8,
    ),
    Planted(
        "unregistered-container/tuple-of-tensors",
        "unregistered-container",
        "warning",
        (Where("", "anchors"),),
        "tensors in a plain tuple: state_dict() and .to() miss them",
        *_registered(TupleOfTensors),
        _IN8,
    ),
    Planted(
        "tensor-attribute/mask",
        "tensor-attribute",
        "warning",
        (Where("", "mask"),),
        "a mask tensor as a plain attribute instead of a buffer",
        *_registered(MaskAttribute),
        _IN8,
    ),
    Planted(
        "global-tensor-in-forward/projection",
        "global-tensor-in-forward",
        "warning",
        (Where("", "PROJECTION"),),
        "forward multiplies by a module-level tensor",
        *_registered(GlobalProjection),
        _IN8,
    ),
    Planted(
        "module-created-in-forward/linear",
        "module-created-in-forward",
        "error",
        (Where("block"),),
        "an nn.Linear built in forward: new random weights every call, never trained",
        _build(Block, LinearPerCall),
        _build(Block, LinearOnce),
        _IN4,
    ),
    Planted(
        "module-created-in-forward/parameter",
        "module-created-in-forward",
        "error",
        (Where("block"),),
        "an nn.Parameter built in forward: random per call, never trained",
        _build(Block, ParameterPerCall),
        _build(Block, ParameterOnce),
        _IN4,
    ),
    Planted(
        "module-created-in-forward/dropout",
        "module-created-in-forward",
        "warning",
        (Where("block"),),
        "an nn.Dropout built in forward: still active after model.eval()",
        _build(Block, DropoutPerCall, mode="eval"),
        _build(Block, DropoutOnce, mode="eval"),
        _IN4,
        context="inference",
    ),
    Planted(
        "module-assigned-twice/block",
        "module-assigned-twice",
        "warning",
        (Where("", "block"),),
        "__init__ assigns self.block twice; the first Linear is discarded and the second used twice",
        _build(BlockAssignedTwice),
        _build(TwoBlocks),
        _IN4,
    ),
    # ---------------------------------------------------------------- one forward and backward
    Planted(
        "unused-parameter/never-ran",
        "unused-parameter",
        "warning",
        (Where("aux", "weight"), Where("aux", "bias")),
        "a defined head that forward never calls",
        _build(WithAux, "never"),
        _build(WithAux, "used"),
        _IN4,
        detail="never-ran",
    ),
    Planted(
        "unused-parameter/output-unused",
        "unused-parameter",
        "warning",
        (Where("aux", "weight"), Where("aux", "bias")),
        "a head called whose output is dropped",
        _build(WithAux, "dropped"),
        _build(WithAux, "used"),
        _IN4,
        detail="output-unused",
    ),
    Planted(
        "param-not-in-optimizer/head",
        "param-not-in-optimizer",
        "error",
        (Where("head", "weight"), Where("head", "bias")),
        "the optimizer was given backbone.parameters() only: the head never changes",
        _build(BackboneHead),
        _build(BackboneHead),
        _IN4,
        optimizer=_sgd_backbone_only,
        twin_optimizer=_sgd_all,
    ),
    Planted(
        "probabilities-into-cross-entropy/functional-softmax",
        "probabilities-into-cross-entropy",
        "warning",
        (Where(""),),
        "the classifier returns F.softmax(logits)",
        _build(Classifier, "softmax"),
        _build(Classifier, "logits"),
        _IN4,
    ),
    Planted(
        "probabilities-into-cross-entropy/softmax-module",
        "probabilities-into-cross-entropy",
        "warning",
        (Where("3"),),
        "an nn.Softmax as the last layer of an nn.Sequential classifier",
        _softmax_sequential,
        _logits_sequential,
        _IN4,
    ),
    Planted(
        "forward-bypasses-call/encoder",
        "forward-bypasses-call",
        "warning",
        (Where("encoder"),),
        "self.encoder.forward(x): the encoder's hooks never fire",
        _build(EncoderHead, True),
        _build(EncoderHead, False),
        _IN4,
    ),
    Planted(
        "train-mode-at-inference/dropout",
        "train-mode-at-inference",
        "warning",
        (Where("drop"),),
        "declared for inference, left in training mode: Dropout drops",
        _build(DropoutNet, mode="train"),
        _build(DropoutNet, mode="eval"),
        _IN4,
        context="inference",
    ),
    Planted(
        "mixed-train-eval/stage2",
        "mixed-train-eval",
        "warning",
        (Where("stage2"),),
        "training, with stage2 (which has Dropout) left in eval mode",
        _stage2_eval,
        _build(TwoStages),
        _IN4,
    ),
    Planted(
        "batchnorm-batch-of-one/batchnorm2d",
        "batchnorm-batch-of-one",
        "warning",
        (Where("bn"),),
        "BatchNorm2d in training mode on a batch of one: batch statistics are one example's",
        _build(ConvBNNet, "batch"),
        _build(ConvBNNet, "group"),
        _IMG1,
    ),
    Planted(
        "batchnorm-batch-of-one/batchnorm1d",
        "batchnorm-batch-of-one",
        "error",
        (Where("bn"),),
        "BatchNorm1d in training mode on a batch of one: forward raises ValueError",
        _build(LinearBN1d, "batch"),
        _build(LinearBN1d, "layer"),
        _VEC1,
    ),
    # ---------------------------------------------------------------- custom autograd Functions
    Planted(
        "autograd-function-wrong-backward/half",
        "autograd-function-wrong-backward",
        "error",
        (Where("act", function="HalfSquare"),),
        "d(x²)/dx written as x",
        _function_net(HalfSquare),
        _function_net(Square),
        _IN4,
        multiple=0.5,
    ),
    Planted(
        "autograd-function-wrong-backward/sign",
        "autograd-function-wrong-backward",
        "error",
        (Where("act", function="FlippedTanh"),),
        "tanh's backward with the sign flipped",
        _function_net(FlippedTanh),
        _function_net(Tanh),
        _IN4,
        multiple=-1.0,
    ),
    Planted(
        "autograd-function-wrong-backward/not-a-multiple",
        "autograd-function-wrong-backward",
        "error",
        (Where("act", function="WrongSin"),),
        "sin's backward uses sin instead of cos",
        _function_net(WrongSin),
        _function_net(Sin),
        _IN4,
    ),
    Planted(
        "autograd-function-wrong-backward/gradient-reversal",
        "autograd-function-wrong-backward",
        "error",
        (Where("act", function="GradReverse"),),
        "a gradient-reversal layer, -0.1 x the gradient on purpose: reported unless declared",
        _function_net(GradReverse, 0.1),
        _function_net(Identity, 0.1),
        _IN4,
        multiple=-0.1,
        intended=True,
    ),
    Planted(
        "autograd-function-gradient-count/missing-none",
        "autograd-function-gradient-count",
        "error",
        (Where("act", function="ScaleByOneGradient"),),
        "forward(x, alpha), backward returns one gradient: backward raises",
        _function_net(ScaleByOneGradient, 2.0),
        _function_net(ScaleBy, 2.0),
        _IN4,
    ),
    Planted(
        "autograd-function-ctx-tensor/input",
        "autograd-function-ctx-tensor",
        "warning",
        (Where("act", "x", function="CtxCube"),),
        "the input kept as ctx.x, not ctx.save_for_backward",
        _function_net(CtxCube),
        _function_net(Cube),
        _IN4,
    ),
    # ---------------------------------------------------------------- initialisation
    Planted(
        "constant-init/all-layers",
        "constant-init",
        "warning",
        (Where("fc1", "weight"), Where("fc2", "weight"), Where("out", "weight")),
        "every Linear weight initialised to 0.05: hidden units identical forever",
        _build(MLP, "constant"),
        _build(MLP, "default"),
        _IN4,
    ),
    Planted(
        "activation-scale-with-depth/explodes",
        "activation-scale-with-depth",
        "warning",
        (Where("layers"),),
        "weights N(0, 1) with fan-in 64: each ReLU layer multiplies the scale by ~5.7",
        _build(DeepMLP, 1.0),
        _build(DeepMLP, None),
        _x(32, 64),
    ),
    Planted(
        "activation-scale-with-depth/vanishes",
        "activation-scale-with-depth",
        "warning",
        (Where("layers"),),
        "weights N(0, 0.01²): each ReLU layer divides the scale by ~18",
        _build(DeepMLP, 0.01),
        _build(DeepMLP, None),
        _x(32, 64),
    ),
    Planted(
        "dead-relu-at-init/bias",
        "dead-relu-at-init",
        "warning",
        (Where("act"),),
        "the layer before the ReLU has bias -5: every unit is off for every input",
        _build(DeadRelu, True),
        _build(DeadRelu, False),
        _x(64, 8),
    ),
)


# ====================================================================== checkpoints without code


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _linear_sd(prefix: str = "fc", dtype: torch.dtype = torch.float32, seed: int = 0) -> StateDict:
    return {
        f"{prefix}.weight": _randn(4, 8, seed=seed, dtype=dtype),
        f"{prefix}.bias": _randn(4, seed=seed + 1, dtype=dtype),
    }


def _with_nan() -> StateDict:
    sd = _linear_sd()
    sd["fc.weight"][1, 2] = float("nan")
    return sd


def _with_inf() -> StateDict:
    sd = _linear_sd()
    sd["fc.bias"][3] = float("inf")
    return sd


def _zero_weight() -> StateDict:
    sd = {**_linear_sd("encoder.fc"), **_linear_sd("head", seed=5)}
    sd["encoder.fc.weight"] = torch.zeros(4, 8)
    return sd


def _fixed_weight() -> StateDict:
    sd = {**_linear_sd("encoder.fc"), **_linear_sd("head", seed=5)}
    sd["encoder.fc.weight"] = torch.full((4, 8), 0.02)
    return sd


def _two_linears() -> StateDict:
    return {**_linear_sd("encoder.fc"), **_linear_sd("head", seed=5)}


def _trained_bn() -> StateDict:
    """BatchNorm2d statistics as torch's own training updates them: three batches in training mode."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).train()
    for seed in range(3):
        bn(_randn(8, 4, 5, 5, seed=seed) * 2.0 + 1.0)
    return {f"bn.{k}": v.detach().clone() for k, v in bn.state_dict().items()}


def _bn_negative_var() -> StateDict:
    sd = _trained_bn()
    sd["bn.running_var"][1] = -0.5
    return sd


def _bn_never_updated() -> StateDict:
    return {f"bn.{k}": v.detach().clone() for k, v in nn.BatchNorm2d(4).state_dict().items()}


def _tied_copies() -> StateDict:
    w = _randn(20, 8)
    return {"embed.weight": w, "lm_head.weight": w.clone()}


def _tied_shared() -> StateDict:
    w = _randn(20, 8)
    return {"embed.weight": w, "lm_head.weight": w}  # what a tied model's state_dict() holds


def _mixed_dtypes() -> StateDict:
    return {"fc.weight": _randn(4, 8, dtype=torch.float16), "fc.bias": _randn(4, seed=1)}


def _half_linear() -> StateDict:
    return _linear_sd(dtype=torch.float16)


def _near_overflow() -> StateDict:
    sd = _half_linear()
    sd["fc.weight"][0, 0] = 60000.0
    return sd


PLANTED_CHECKPOINTS: tuple[PlantedCheckpoint, ...] = (
    PlantedCheckpoint(
        "nonfinite-weights/nan",
        "nonfinite-weights",
        "error",
        (Where("fc", "weight"),),
        "one NaN in fc.weight",
        _with_nan,
        _linear_sd,
    ),
    PlantedCheckpoint(
        "nonfinite-weights/inf",
        "nonfinite-weights",
        "error",
        (Where("fc", "bias"),),
        "one +Inf in fc.bias",
        _with_inf,
        _linear_sd,
    ),
    PlantedCheckpoint(
        "constant-tensor/zeros",
        "constant-tensor",
        "warning",
        (Where("encoder.fc", "weight"),),
        "a weight matrix of zeros",
        _zero_weight,
        _two_linears,
    ),
    PlantedCheckpoint(
        "constant-tensor/fixed-value",
        "constant-tensor",
        "warning",
        (Where("encoder.fc", "weight"),),
        "a weight matrix of 0.02 everywhere",
        _fixed_weight,
        _two_linears,
    ),
    PlantedCheckpoint(
        "batchnorm-stats-untrained/negative-var",
        "batchnorm-stats-untrained",
        "error",
        (Where("bn", "running_var"),),
        "a running variance below zero",
        _bn_negative_var,
        _trained_bn,
    ),
    PlantedCheckpoint(
        "batchnorm-stats-untrained/never-updated",
        "batchnorm-stats-untrained",
        "warning",
        (Where("bn", "num_batches_tracked"),),
        "num_batches_tracked = 0 with mean 0 and variance 1: never trained",
        _bn_never_updated,
        _trained_bn,
    ),
    PlantedCheckpoint(
        "tied-weights-stored-twice/lm-head",
        "tied-weights-stored-twice",
        "info",
        (Where("lm_head", "weight"),),
        "lm_head.weight is an equal copy of embed.weight",
        _tied_copies,
        _tied_shared,
    ),
    PlantedCheckpoint(
        "mixed-dtypes-in-module/fc",
        "mixed-dtypes-in-module",
        "warning",
        (Where("fc"),),
        "fc.weight float16, fc.bias float32",
        _mixed_dtypes,
        _half_linear,
    ),
    PlantedCheckpoint(
        "fp16-near-overflow/fc",
        "fp16-near-overflow",
        "warning",
        (Where("fc", "weight"),),
        "a float16 weight of 60,000: doubling it overflows",
        _near_overflow,
        _half_linear,
    ),
)


# ====================================================================== near-misses


def _norms_and_scalars() -> StateDict:
    """LayerNorm ones and zeros, a zero bias, BatchNorm's int64 counter, position ids: none is a finding."""
    sd = _linear_sd("fc")
    sd["fc.bias"] = torch.zeros(4)
    sd["norm.weight"] = torch.ones(8)
    sd["norm.bias"] = torch.zeros(8)
    sd["norm2.weight"] = torch.ones(8)  # equal to norm.weight, small, 1-D: not a tied copy
    sd["bn.num_batches_tracked"] = torch.tensor(7)
    sd["position_ids"] = torch.arange(16).unsqueeze(0)
    return sd


def _int8_with_scale() -> StateDict:
    """A quantized layout: int8 weight and a float32 per-row scale in one module, by design."""
    return {
        "fc.weight": torch.randint(
            -127, 128, (4, 8), dtype=torch.int8, generator=torch.Generator().manual_seed(0)
        ),
        "fc.weight_scale": _randn(4, 1).abs() / 127,
        "fc.bias": _randn(4),
    }


def _bn_trained_with_counter() -> StateDict:
    return _trained_bn()  # float running stats beside an int64 num_batches_tracked


def _bf16_large() -> StateDict:
    sd = _linear_sd(dtype=torch.bfloat16)
    sd["fc.weight"][0, 0] = 1.0e5  # bfloat16 reaches 3.4e38
    return sd


def _fp32_large() -> StateDict:
    sd = _linear_sd()
    sd["fc.weight"][0, 0] = 1.0e5
    return sd


NEAR_MISSES: tuple[NearMiss, ...] = (
    NearMiss(
        "unregistered-container/config-values",
        "unregistered-container",
        None,
        "lists/tuples/dicts of ints, strings and floats are configuration; a plain list of modules "
        "that an nn.ModuleList already registers (taps for hooks) loses nothing",
        _build(ConfigAttributes),
        _IN4,
    ),
    NearMiss(
        "unregistered-container/stateless-activations",
        "unregistered-container",
        "info",
        "nn.ReLU and nn.GELU in a plain list hold no parameter, buffer or mode that matters",
        _build(PerLayerActivations),
        _IN8,
    ),
    NearMiss(
        "tensor-attribute/non-persistent-buffer",
        "tensor-attribute",
        None,
        "a buffer registered with persistent=False moves with .to() and is left out of state_dict() "
        "on purpose",
        _build(MaskAttribute, True, persistent=False),
        _IN8,
    ),
    NearMiss(
        "tensor-attribute/metadata",
        "tensor-attribute",
        None,
        "torch.Size and torch.dtype attributes are not tensors",
        _build(ConfigAttributes),
        _IN4,
    ),
    NearMiss(
        "module-created-in-forward/lazy-linear",
        "module-created-in-forward",
        None,
        "nn.LazyLinear materialises its parameters once, on the first call, by design",
        _build(Lazy),
        _IN4,
    ),
    NearMiss(
        "module-created-in-forward/stateless-relu",
        "module-created-in-forward",
        "info",
        "an nn.ReLU built per call computes the same thing each time; only hooks cannot see it",
        _build(Block, ReluPerCall),
        _IN4,
    ),
    NearMiss(
        "module-assigned-twice/alias",
        "module-assigned-twice",
        None,
        "one module registered under two names is an alias, not a discarded module",
        _build(SharedUnderTwoNames),
        _IN8,
    ),
    NearMiss(
        "module-assigned-twice/wrapped",
        "module-assigned-twice",
        None,
        "self.fc = weight_norm(self.fc) assigns self.fc twice and keeps the first module, wrapped",
        _build(WeightNormed),
        _IN8,
    ),
    NearMiss(
        "module-assigned-twice/tied-weight",
        "module-assigned-twice",
        None,
        "head.weight = embed.weight reassigns a Parameter (weight tying), not a module",
        _build(TiedHead),
        _ids,
    ),
    NearMiss(
        "module-assigned-twice/head-replaced-after-init",
        "module-assigned-twice",
        None,
        "model.head = nn.Linear(...) after construction is the fine-tuning idiom",
        _head_replaced,
        _IN4,
    ),
    NearMiss(
        "unused-parameter/frozen",
        "unused-parameter",
        "info",
        "a frozen (requires_grad=False) head gets no gradient by design",
        _frozen_aux,
        _IN4,
    ),
    NearMiss(
        "param-not-in-optimizer/frozen-backbone",
        "param-not-in-optimizer",
        None,
        "a frozen backbone left out of the optimizer: its parameters do not require grad",
        _frozen_backbone,
        _IN4,
        optimizer=_sgd_trainable,
    ),
    NearMiss(
        "param-not-in-optimizer/no-decay-groups",
        "param-not-in-optimizer",
        None,
        "two param groups (no weight decay on biases) together hold every parameter",
        _build(BackboneHead),
        _IN4,
        optimizer=_adamw_no_decay_groups,
    ),
    NearMiss(
        "probabilities-into-cross-entropy/log-softmax",
        "probabilities-into-cross-entropy",
        "info",
        "log-probabilities: right for NLLLoss, and CrossEntropyLoss of them equals that of the logits",
        _build(Classifier, "log_softmax"),
        _IN4,
    ),
    NearMiss(
        "probabilities-into-cross-entropy/sigmoid-multilabel",
        "probabilities-into-cross-entropy",
        "info",
        "independent sigmoids (multi-label, for BCELoss): rows do not sum to 1",
        _build(Classifier, "sigmoid"),
        _IN4,
    ),
    NearMiss(
        "probabilities-into-cross-entropy/softplus-regression",
        "probabilities-into-cross-entropy",
        None,
        "non-negative regression outputs whose rows do not sum to 1",
        _softplus_regressor,
        _IN4,
    ),
    NearMiss(
        "forward-bypasses-call/super-forward",
        "forward-bypasses-call",
        None,
        "a subclass of nn.Sequential calling super().forward(x) runs its own forward, whose children "
        "are called through __call__",
        _scaled_sequential,
        _IN4,
    ),
    NearMiss(
        "train-mode-at-inference/no-dropout-or-norm",
        "train-mode-at-inference",
        "info",
        "training mode changes nothing in a model without Dropout or BatchNorm",
        _build(MLP, "default", mode="train"),
        _IN4,
        context="inference",
    ),
    NearMiss(
        "mixed-train-eval/frozen-bn-backbone",
        "mixed-train-eval",
        "info",
        "a frozen backbone kept in eval mode (BatchNorm statistics fixed) while the head trains",
        _frozen_bn_backbone,
        _x(4, 3, 6, 6),
    ),
    NearMiss(
        "batchnorm-batch-of-one/eval",
        "batchnorm-batch-of-one",
        None,
        "BatchNorm in eval mode uses its running statistics: a batch of one is fine",
        _build(ConvBNNet, "batch", mode="eval"),
        _IMG1,
        context="inference",
    ),
    NearMiss(
        "constant-init/zero-init-residual",
        "constant-init",
        "info",
        "the last layer of a residual branch zero-initialised on purpose; LayerNorm's ones and zeros "
        "and zero biases are constant by design",
        _build(ResidualMLP),
        _IN4,
    ),
    NearMiss(
        "constant-tensor/norms-and-scalars",
        "constant-tensor",
        None,
        "1-D norm weights and biases, integer counters and position ids",
        _norms_and_scalars,
    ),
    NearMiss(
        "tied-weights-stored-twice/equal-norm-weights",
        "tied-weights-stored-twice",
        None,
        "two LayerNorm weights both all ones are equal by construction, not a tied copy",
        _norms_and_scalars,
    ),
    NearMiss(
        "mixed-dtypes-in-module/int8-with-scale",
        "mixed-dtypes-in-module",
        None,
        "an int8 weight with a float32 scale is a quantized layout",
        _int8_with_scale,
    ),
    NearMiss(
        "mixed-dtypes-in-module/batchnorm-counter",
        "mixed-dtypes-in-module",
        None,
        "BatchNorm's int64 num_batches_tracked beside its float statistics",
        _bn_trained_with_counter,
    ),
    NearMiss(
        "fp16-near-overflow/bfloat16",
        "fp16-near-overflow",
        None,
        "1e5 in bfloat16 is far from its range's end",
        _bf16_large,
    ),
    NearMiss(
        "fp16-near-overflow/float32",
        "fp16-near-overflow",
        None,
        "1e5 in float32 is far from its range's end",
        _fp32_large,
    ),
)


# ====================================================================== real architectures that must stay clean

SAMPLE_MODELS = Path(__file__).resolve().parent.parent / "sample_models"


class BasicBlock(nn.Module):
    """ResNet's basic block (two 3x3 conv-BN, a projection shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    """A ResNet-10-style network with torchvision's layout and initialisation (Kaiming fan_out for convs,
    BatchNorm weight 1 and bias 0), written here: the PyPI torchvision wheel does not import against the
    pinned CPU torch ("operator torchvision::nms does not exist"), and timm needs torchvision."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _sample_models() -> Any:
    """sample_models/models.py, by path (another module named `models` is tests/models.py)."""
    spec = importlib.util.spec_from_file_location(
        "sample_models_models", SAMPLE_MODELS / "models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        _seeded()
        cfg = getattr(transformers, config_class)(**config)
        return getattr(transformers, model_class)(cfg).train()

    return build


def _tokens(vocab: int, *, labels: bool = True, decoder: bool = False) -> Callable[[], Batch]:
    def build() -> Batch:
        ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(1))
        kwargs: dict[str, Any] = {"input_ids": ids}
        if labels:
            kwargs["labels"] = (
                ids.clone()
                if not decoder
                else torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(2))
            )
        return (), kwargs

    return build


def _pixels() -> Batch:
    g = torch.Generator().manual_seed(1)
    return (), {
        "pixel_values": torch.randn(2, 3, 16, 16, generator=g),
        "labels": torch.tensor([0, 2]),
    }


def _sample(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(_sample_models(), name)()

    return build


def _lm_ids() -> Batch:
    return (torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1)),), {}


TINY = {"vocab_size": 99}
CLEAN_MODELS: tuple[CleanModel, ...] = (
    CleanModel(
        "gpt2",
        _hf(
            "GPT2LMHeadModel",
            "GPT2Config",
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            **TINY,
        ),
        _tokens(99),
        needs="transformers",
    ),
    CleanModel(
        "bert",
        _hf(
            "BertForMaskedLM",
            "BertConfig",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=32,
            **TINY,
        ),
        _tokens(99),
        needs="transformers",
    ),
    CleanModel(
        "t5",
        _hf(
            "T5ForConditionalGeneration",
            "T5Config",
            d_model=32,
            d_ff=37,
            d_kv=16,
            num_layers=2,
            num_heads=2,
            decoder_start_token_id=0,
            **TINY,
        ),
        _tokens(99, decoder=True),
        needs="transformers",
    ),
    CleanModel(
        "llama",
        _hf(
            "LlamaForCausalLM",
            "LlamaConfig",
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
            **TINY,
        ),
        _tokens(99),
        needs="transformers",
    ),
    CleanModel(
        "vit",
        _hf(
            "ViTForImageClassification",
            "ViTConfig",
            image_size=16,
            patch_size=4,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            num_labels=3,
        ),
        _pixels,
        needs="transformers",
    ),
    CleanModel("resnet", _build(SmallResNet), _x(4, 3, 32, 32)),
    CleanModel("sample-small-cnn", _sample("small_cnn"), _x(2, 3, 8, 8), context="inference"),
    CleanModel("sample-tiny-lm", _sample("tiny_lm"), _lm_ids, context="inference"),
)
