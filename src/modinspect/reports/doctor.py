"""What `doctor` returns: frozen findings, and the catalogue of its checks (identifier, summary, story, fix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modinspect.reports import short_repr

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")  # increasing
RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Location:
    """Where a finding points: a module path ("" is the root), an attribute, a Function, a source line."""

    module: str = ""
    attribute: str | None = (
        None  # attribute, parameter or buffer name; a module-level name; a ctx attribute
    )
    function: str | None = None  # a custom torch.autograd.Function's class name
    file: str | None = None
    line: int | None = None

    @property
    def key(self) -> str:
        """The dotted name: a state-dict key for a parameter, the module path otherwise."""
        return ".".join(p for p in (self.module, self.attribute) if p)

    def describe(self) -> str:
        """`encoder.fc.weight`, `<root>.mask`, `act (HalfSquare)`, with `file:line` when known."""
        text = self.key or "<root>"
        if self.module == "" and self.attribute:
            text = f"<root>.{self.attribute}"
        if self.function:
            text = f"{text} ({self.function})"
        if self.file:
            text += f" at {self.file}:{self.line}" if self.line else f" at {self.file}"
        return text


@dataclass(frozen=True)
class Finding:
    """One mistake found: its check's identifier, how bad, where, what it means in one line, and the fix."""

    id: str
    severity: Severity
    where: Location
    message: str
    fix: str
    # unused-parameter: never-ran / output-unused / frozen; autograd-function-wrong-backward: the multiple
    # ("-0.1") or "not-a-multiple"
    detail: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    """Every finding (most severe first), the checks that ran, and notes on what could not be checked."""

    source: str
    kind: Literal["module", "checkpoint"]
    context: str  # training / inference (a live module), or "" for a checkpoint
    inputs: str  # the example input, described; "" when nothing ran
    findings: tuple[Finding, ...] = field(repr=False)
    checks: tuple[str, ...] = field(repr=False)  # identifiers of the checks that ran
    notes: tuple[str, ...] = field(default=(), repr=False)

    __repr__ = short_repr

    def count(self, severity: Severity) -> int:
        """How many findings have this severity."""
        return sum(f.severity == severity for f in self.findings)

    def at_or_above(self, severity: Severity) -> tuple[Finding, ...]:
        """The findings at `severity` or worse, most severe first."""
        return tuple(f for f in self.findings if RANK[f.severity] >= RANK[severity])


@dataclass(frozen=True)
class Check:
    """A check of the catalogue: what it looks for in one line, the longer story (--explain), the fix."""

    id: str
    scope: Literal["module", "run", "function", "init", "checkpoint"]
    summary: str
    story: str
    fix: str


def _c(
    id_: str,
    scope: Literal["module", "run", "function", "init", "checkpoint"],
    summary: str,
    story: str,
    fix: str,
) -> Check:
    return Check(id_, scope, summary, story, fix)


CATALOG: dict[str, Check] = {
    c.id: c
    for c in (
        _c(
            "unregistered-container",
            "module",
            "modules, parameters or tensors held in a plain list/dict/tuple attribute",
            "nn.Module registers only what is assigned directly as a Module, Parameter or buffer. Layers in a plain "
            "list are invisible to parameters(), state_dict(), .to() and train()/eval(): the optimizer never updates "
            "them, checkpoints do not contain them, and they stay on the CPU in float32 when the model moves. "
            "Stateless modules (ReLU, GELU) lose nothing, so they are reported as an info only.",
            "use nn.ModuleList / nn.ModuleDict / nn.ParameterList, or register_buffer for tensors",
        ),
        _c(
            "tensor-attribute",
            "module",
            "a tensor stored as a plain attribute, neither Parameter nor buffer",
            "A tensor assigned as `self.mask = torch.tril(...)` is not a buffer: model.to('cuda') and .double() "
            "leave it behind (a device or dtype error on first use), and state_dict() does not save it.",
            "self.register_buffer(name, tensor) (persistent=False if it should not be saved)",
        ),
        _c(
            "global-tensor-in-forward",
            "module",
            "forward uses a module-level tensor that the model does not own",
            "forward reads a tensor defined at module level. The model does not own it: .to() does not move it and "
            "state_dict() does not save it, so the model breaks on another device or dtype.",
            "copy it into the model with self.register_buffer(name, TENSOR.clone()) and use the buffer",
        ),
        _c(
            "module-created-in-forward",
            "run",
            "a module or Parameter built inside forward(), new on every call",
            "A layer built inside forward() is new, with fresh random weights, on every call: it never trains, is "
            "never saved, and its results differ from call to call. A Dropout built there ignores model.eval(). "
            "Stateless modules (ReLU, a loss) built per call compute the same thing each time: an info.",
            "build the module once in __init__ and call it in forward",
        ),
        _c(
            "module-assigned-twice",
            "module",
            "__init__ assigns a module to the same attribute twice; the first is discarded",
            "Two assignments of a newly built module to one attribute in __init__ (often a copy-pasted line) "
            "silently drop the first: the model has one layer less than written and uses the second twice.",
            "give the second module its own attribute name",
        ),
        _c(
            "unused-parameter",
            "run",
            "a parameter that requires grad got no gradient (never ran / output unused)",
            "After one backward pass the parameter's .grad is still None: its module never ran, or its output did "
            "not reach the loss. It wastes memory and optimizer state, and DistributedDataParallel stops with "
            "'Expected to have finished reduction in the prior iteration ... parameters that were not used in "
            "producing loss', naming indices only.",
            "remove the unused module, use its output, freeze it (requires_grad_(False)), or pass "
            "find_unused_parameters=True to DistributedDataParallel",
        ),
        _c(
            "param-not-in-optimizer",
            "run",
            "a parameter that requires grad is in no param group of the optimizer",
            "The parameter gets gradients but the optimizer was not given it (e.g. built from "
            "model.backbone.parameters() only): optimizer.step() never changes it.",
            "build the optimizer from model.parameters(), or freeze the parameter",
        ),
        _c(
            "probabilities-into-cross-entropy",
            "run",
            "a classifier outputs probabilities; CrossEntropyLoss expects logits",
            "The output rows are probabilities (a softmax): nn.CrossEntropyLoss applies log-softmax itself, so the "
            "model is trained through a double softmax, with small, saturating gradients. Log-probabilities suit "
            "NLLLoss and sigmoids suit BCELoss: those are infos.",
            "return the logits and let CrossEntropyLoss apply the softmax; apply softmax only at inference",
        ),
        _c(
            "forward-bypasses-call",
            "run",
            "a submodule's forward ran without its __call__ (hooks bypassed)",
            "Calling `self.encoder.forward(x)` instead of `self.encoder(x)` skips __call__: forward hooks and "
            "pre-hooks (FSDP, quantization, pruning, profilers, modinspect stats) never see the call.",
            "call the module itself: self.encoder(x)",
        ),
        _c(
            "train-mode-at-inference",
            "module",
            "modules in training mode that change the output, where the caller says inference",
            "Dropout drops and BatchNorm uses (and updates) batch statistics in training mode: at inference the "
            "outputs are random and depend on the batch.",
            "call model.eval() before inference",
        ),
        _c(
            "mixed-train-eval",
            "module",
            "some modules in training mode and others in eval mode",
            "Part of the model is in eval mode while the rest trains: its Dropout does not drop and its BatchNorm "
            "statistics are frozen, usually left over from an evaluation helper. A frozen backbone kept in eval on "
            "purpose is an info.",
            "call model.train() on the whole model (or freeze that part on purpose)",
        ),
        _c(
            "batchnorm-batch-of-one",
            "run",
            "BatchNorm in training mode sees a batch of one",
            "In training mode BatchNorm normalises with the batch's own statistics: with one example they are that "
            "example's (instance normalisation), and with one value per channel the forward raises.",
            "use batches larger than one, model.eval() for single examples, or GroupNorm/LayerNorm",
        ),
        _c(
            "autograd-function-wrong-backward",
            "function",
            "backward disagrees with gradcheck (float64)",
            "The custom torch.autograd.Function's backward does not return the gradient of its forward: training "
            "follows another function. When the analytic gradient is a constant multiple of the numerical one the "
            "multiple is given; a gradient-reversal layer does that on purpose (declare it with --expect).",
            "fix backward; if the multiple is intended, declare it: --expect NAME=MULTIPLE",
        ),
        _c(
            "autograd-function-gradient-count",
            "function",
            "backward returns the wrong number of gradients",
            "backward must return one gradient per argument of forward (None for non-tensor arguments); otherwise "
            "autograd raises 'returned an incorrect number of gradients'.",
            "return one value per forward argument, None for the non-differentiable ones",
        ),
        _c(
            "autograd-function-ctx-tensor",
            "function",
            "a tensor kept on ctx instead of ctx.save_for_backward",
            "A tensor stored as ctx.x escapes autograd's version check (an in-place change after forward silently "
            "changes the gradient) and can create a reference cycle that leaks memory.",
            "ctx.save_for_backward(x) in forward and ctx.saved_tensors in backward",
        ),
        _c(
            "constant-init",
            "init",
            "every weight of a layer is the same non-zero value: its units never differ",
            "When every weight of a layer is equal, every unit computes the same thing and receives the same "
            "gradient: the symmetry is never broken and the layer acts as one unit. An all-zero matrix (zero-init "
            "residual, LoRA's B) is usually on purpose: an info.",
            "initialise with random values (nn.init.kaiming_normal_, normal_(std=0.02), ...)",
        ),
        _c(
            "activation-scale-with-depth",
            "init",
            "activation scale grows or shrinks by orders of magnitude with depth",
            "The standard deviation of the activations of repeated blocks changes by 100x or more from the first "
            "block to the last: gradients explode or vanish and training stalls.",
            "use a variance-preserving init (Kaiming for ReLU, Xavier for tanh) or normalisation layers",
        ),
        _c(
            "dead-relu-at-init",
            "init",
            "ReLU units that output zero for every example at init",
            "At least half of the ReLU's units are zero for every example of the batch: no gradient flows through "
            "them, and they may never come back.",
            "check the preceding layer's bias and init; consider LeakyReLU/GELU",
        ),
        _c(
            "nonfinite-weights",
            "checkpoint",
            "NaN or Inf in a stored tensor",
            "A stored tensor holds NaN or Inf: every output that depends on it is NaN.",
            "go back to an earlier checkpoint; find the step that diverged (modinspect stats, watch)",
        ),
        _c(
            "constant-tensor",
            "checkpoint",
            "a stored weight matrix whose elements are all equal",
            "A weight matrix whose elements are all equal (often all zero) was never trained or was overwritten: "
            "its output units are all the same.",
            "check the saving code and the initialisation; the layer learned nothing",
        ),
        _c(
            "batchnorm-stats-untrained",
            "checkpoint",
            "BatchNorm running_var <= 0, or statistics never updated",
            "A running variance at or below zero gives NaN in eval mode; num_batches_tracked = 0 with mean 0 and "
            "variance 1 means the statistics were never updated: eval mode normalises nothing.",
            "train with the BatchNorm in training mode, or recompute the statistics on data",
        ),
        _c(
            "tied-weights-stored-twice",
            "checkpoint",
            "two keys hold equal copies of one weight in two storages",
            "Two tensors hold the same values in separate storages, as a tied weight saved without its tie: it "
            "costs the space twice, and a model that loads it may untie the weights.",
            "save with safetensors' save_model (or keep the tie when saving)",
        ),
        _c(
            "mixed-dtypes-in-module",
            "checkpoint",
            "one module's floating tensors are stored in different dtypes",
            "A module's weight and bias are stored in different floating dtypes: loading it as is fails with a "
            "dtype mismatch in the first matmul, or silently upcasts.",
            "cast the whole module to one dtype before saving",
        ),
        _c(
            "fp16-near-overflow",
            "checkpoint",
            "float16 values within a factor 2 of 65,504",
            "A float16 tensor holds values within a factor 2 of float16's largest value (65,504): the next "
            "multiplication by 2 overflows to Inf.",
            "keep these weights in float32 or bfloat16, or rescale them",
        ),
    )
}


def check_ids(ids: tuple[str, ...] | list[str] | None, option: str) -> tuple[str, ...]:
    """Validate identifiers given to --select/--ignore (or the library's select/ignore)."""
    from modinspect.errors import UsageError

    out = tuple(ids or ())
    for i in out:
        if i not in CATALOG:
            raise UsageError(
                f"{option} {i!r} is not a doctor check; `modinspect doctor --explain list` lists them"
            )
    return out
