"""The frozen dataclasses every analysis returns: plain str/int/float/tuple, never tensors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def short_repr(obj: Any) -> str:
    """`Name(field=value, ...)` over the fields a repr shows; a hidden collection as its size (`tensors=<52 items>`).

    Reports hold every row (`field(repr=False)`): their repr names the totals and says how many rows there
    are, so that a report echoed in a notebook or a log is a line, not the whole report.
    """
    parts = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.repr:
            parts.append(f"{f.name}={value!r}")
        elif isinstance(value, tuple | list | dict | set | frozenset):
            if value:
                parts.append(f"{f.name}=<{len(value)} item{'s' if len(value) != 1 else ''}>")
        elif not (value is None or f.name.startswith("_") or isinstance(value, str | int | float)):
            parts.append(f"{f.name}=<{type(value).__name__}>")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class TensorRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    kind: str
    requires_grad: bool | None
    persistent: bool | None
    alias_of: str | None  # the first name of its tied group, when this one is a later alias
    scheme: str | None = (
        None  # a quantized layer's scheme, on its packed weight and its auxiliary tensors
    )
    logical_shape: tuple[int, ...] | None = (
        None  # the shape a packed weight stands for (GPTQ's qweight: [out, in])
    )

    @property
    def short(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def numel(self) -> int:
        """Logical elements: a packed weight's logical shape's, else the stored shape's."""
        return math.prod(self.logical_shape if self.logical_shape is not None else self.shape)

    @property
    def bits_per_weight(self) -> float | None:
        """Stored bits per logical element (4.5 for GGUF's Q4_K, 32.0 for float32); None for an empty tensor."""
        return bits_per_weight(self.nbytes, self.numel)


def bits_per_weight(nbytes: int, elements: int) -> float | None:
    return nbytes * 8 / elements if elements else None


@dataclass(frozen=True, slots=True)
class ModuleRow:
    """One module in the flat list: counts are recursive, each storage once."""

    name: str
    type: str | None
    params: int
    bytes: int
    trainable: int | None
    training: bool | None
    parent_training: bool | None = (
        None  # the parent module's flag (None for the root, or when unknown)
    )
    scheme: str | None = None  # a quantized layer's own scheme ('gptq 4-bit g128')
    bits_per_weight: float | None = (
        None  # its packed weight and auxiliary tensors' bits per logical weight
    )


@dataclass(frozen=True, slots=True)
class QuantLayer:
    """A quantized layer: its packed weight, the auxiliary tensors it needs, and the float shape they stand for."""

    module: str
    scheme: str  # 'gptq 4-bit g128', 'bnb nf4', 'fp8 e4m3 block 128×128', 'qint8'
    weight: str  # the packed weight's stored name
    shape: tuple[int, ...]  # the logical shape: the float layer's weight
    aux: tuple[str, ...]  # scales, zeros, group indices, absmax, ...: stored, not parameters
    bytes: int  # the packed weight and its auxiliary tensors

    @property
    def params(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float | None:
        return bits_per_weight(self.bytes, self.params)


@dataclass(frozen=True, slots=True)
class ModuleNode:
    """A node of the displayed tree; `repeat` > 1 stands for a run of identical blocks."""

    row: ModuleRow
    tensors: tuple[TensorRow, ...] = field(repr=False)
    children: tuple[ModuleNode, ...] = field(repr=False)
    repeat: int = 1
    last_name: str | None = None
    run_params: int = 0
    run_bytes: int = 0
    hidden: int = 0  # children and tensors cut by --depth

    __repr__ = short_repr

    @property
    def short(self) -> str:
        return self.row.name.rpartition(".")[2]


@dataclass(frozen=True)
class DtypeTotal:
    dtype: str
    elements: int
    bytes: int

    @property
    def bits_per_weight(self) -> float | None:
        return bits_per_weight(self.bytes, self.elements)


@dataclass(frozen=True)
class Totals:
    """A source's totals, each storage counted once (tied weights once). None where the format cannot say.

    Attributes:
        params: elements of the parameters (in a checkpoint: of every tensor not known as a buffer).
        trainable: of which requires_grad.
        frozen: of which not.
        buffers: elements of the buffers.
        persistent_buffers: of which saved in the state dict.
        non_persistent_buffers: of which not.
        bytes: bytes of every tensor, as stored.
        tensors: number of tensors (names).
    """

    params: int
    trainable: int | None
    frozen: int | None
    buffers: int | None
    persistent_buffers: int | None
    non_persistent_buffers: int | None
    bytes: int
    tensors: int


@dataclass(frozen=True)
class ModuleShapes:
    """One module's part of a forward pass; figures include its children's and sum over its calls."""

    name: str
    type: str
    calls: int
    output_shapes: tuple[tuple[int, ...], ...]  # of the first call, every tensor in the output
    output_dtypes: tuple[str, ...]
    flops: int  # torch.utils.flop_counter's count: a multiply-add is 2 FLOPs
    output_bytes: int  # bytes of the tensors it returned, over all calls
    saved_bytes: (
        int  # bytes autograd saved for backward while it ran, each storage once, weights excluded
    )

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass(frozen=True)
class ShapesTotals:
    input_bytes: int
    forward_bytes: int  # the leaf modules' outputs (what torchinfo's forward/backward size doubles)
    backward_bytes: int  # saved for backward, each storage once, parameters and buffers excluded
    param_bytes: int  # in the stored dtypes, tied weights once
    buffer_bytes: int
    flops: int

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass(frozen=True)
class ShapesReport:
    """A forward pass on the meta device: per module (named as in the tree) and in total."""

    inputs: str
    training: bool
    modules: tuple[ModuleShapes, ...] = field(repr=False)
    totals: ShapesTotals

    __repr__ = short_repr

    def get(self, name: str) -> ModuleShapes | None:
        """The module named `name` (as in the tree), or None."""
        return next((m for m in self.modules if m.name == name), None)


@dataclass(frozen=True)
class TreeReport:
    """What `modinspect tree` shows: a source's modules and tensors, and totals over everything.

    `modules` is the flat list (counts recursive), `root` the displayed tree (runs of identical blocks folded,
    `depth` and `filter` applied); `tied` groups the names that share one storage.
    """

    source: str
    format: str
    module_known: bool
    training: bool | None
    totals: Totals
    by_dtype: tuple[DtypeTotal, ...] = field(repr=False)
    modules: tuple[ModuleRow, ...] = field(repr=False)
    tensors: tuple[TensorRow, ...] = field(repr=False)
    tied: tuple[tuple[str, ...], ...] = field(repr=False)
    root: ModuleNode = field(repr=False)
    state_dict_key: str | None
    other_entries: tuple[tuple[str, str], ...] = field(repr=False)
    metadata: tuple[tuple[str, str], ...] = field(repr=False)
    notes: tuple[str, ...] = field(repr=False)
    filter: str | None
    # Attached by analysis.shapes for live modules: (module name, extra_repr()) and the forward pass.
    extra_reprs: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    shapes: ShapesReport | None = None
    # Globals the file's pickle calls that are not known data classes: torch.load would run them (stand-ins here).
    would_call: tuple[str, ...] = field(default=(), repr=False)
    # Per scheme: logical elements and the bytes stored for them, auxiliary tensors included.
    by_scheme: tuple[DtypeTotal, ...] = field(default=(), repr=False)

    __repr__ = short_repr


@dataclass(frozen=True)
class Mismatch:
    """A key whose two sides differ: `model` is the model's side, `checkpoint` the checkpoint's."""

    name: str
    model: str
    checkpoint: str


@dataclass(frozen=True)
class Alias:
    name: str
    target: str


@dataclass(frozen=True)
class LoadPlan:
    """Every key's status. Model-side names except `unexpected`, which holds checkpoint names as stored."""

    loaded: tuple[str, ...] = field(repr=False)
    cast: tuple[Mismatch, ...] = field(repr=False)  # loaded, but torch's copy_ converts the dtype
    mismatched: tuple[Mismatch, ...] = field(repr=False)
    missing: tuple[str, ...] = field(repr=False)
    unexpected: tuple[str, ...] = field(repr=False)
    tied: tuple[Alias, ...] = field(repr=False)  # model names filled through a loaded tied partner
    # (model name, checkpoint name) for each loaded key
    sources: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    hints: tuple[str, ...] = field(default=(), repr=False)

    __repr__ = short_repr

    @property
    def strict_ok(self) -> bool:
        """Whether a strict load would succeed: no missing, unexpected or mis-shaped key."""
        return not (self.missing or self.unexpected or self.mismatched)


@dataclass(frozen=True)
class LoadReport:
    """What `modinspect load` did: the plan, whether values were copied, and the file written."""

    model: str
    checkpoint: str
    plan: LoadPlan
    strict: bool
    skip_mismatched: bool
    performed: bool  # values were copied into the model
    dry_run: bool
    written: str | None
    # (model name, max |checkpoint value − value the model holds after copy_|) for each cast key, once copied
    cast_errors: tuple[tuple[str, float], ...] = field(default=(), repr=False)
    # globals the checkpoint's pickle calls: torch.load would run them
    would_call: tuple[str, ...] = field(default=(), repr=False)

    __repr__ = short_repr

    @property
    def strict_failed(self) -> bool:
        """Whether `strict` was asked and the plan fails it (then nothing was loaded)."""
        return self.strict and not self.plan.strict_ok


@dataclass(frozen=True)
class ModuleStats:
    """Statistics of one module's output, merged over every call and batch."""

    name: str
    type: str
    calls: int
    count: int  # elements seen
    finite: int  # of which finite; mean/std/min/max/mean_abs are over these
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    mean_abs: float | None
    zero_fraction: float | None
    nan: int
    inf: int
    dead_fraction: float | None  # ReLU-family only
    units: int | None
    grad_norm: float | None  # of the gradient w.r.t. the output; None without backward
    grad_nan: int
    grad_inf: int
    param_grad_norm: float | None  # of this module's own parameters' gradients
    param_grad_nan: int
    param_grad_inf: int
    # counts over [min, max] of the first call, for sparklines
    histogram: tuple[int, ...] = field(repr=False)
    flags: tuple[
        str, ...
    ]  # nan, inf, dead, mostly-dead, exploding-grad, vanishing-grad, nonfinite-grad
    # len(histogram) + 1 edges, equal widths over [min, max]
    histogram_edges: tuple[float, ...] = field(default=(), repr=False)
    input_from: str | None = None  # the hooked module whose output this module's first input was

    __repr__ = short_repr


@dataclass(frozen=True)
class NonfiniteOrigin:
    """Where the first NaN/Inf came from. `module` is None when the input or the loss already held it.

    The op-level fields are filled from the exact replay of the flagged batch, where known.
    """

    module: str | None
    type: str | None
    phase: str  # forward | backward
    cause: str  # produced | input | loss | weight | overflow
    passed_on: tuple[str, ...] = field(repr=False)
    op: str | None = None  # the aten op that produced it from finite inputs: aten::log
    source: str | None = None  # file:line of the user's code that ran that op
    code: str | None = None  # that line's text
    node: str | None = None  # backward: the autograd node (PowBackward0)
    created_at: str | None = None  # backward: file:line of the forward code that created the node
    created_code: str | None = None
    tensor: str | None = None  # cause weight: the parameter or buffer that already held NaN/Inf
    detail: str | None = None  # "holds 1 NaN", "exceeds float16's largest finite value 65504"
    rank: int | None = None  # under torchrun: the rank whose shard held it (None on one process)
    caller: str | None = (
        None  # watch: file:line of the user's own code that called the model (train.py:42)
    )
    caller_code: str | None = None

    __repr__ = short_repr


@dataclass(frozen=True)
class FrozenParams:
    """The model's parameters with requires_grad False, each tensor once (tied ones under their first name)."""

    params: int  # elements of the frozen parameters
    total: int  # elements of all parameters
    tensors: int  # frozen parameter tensors
    # the modules every parameter of which is frozen, the outermost only ("" the model)
    modules: tuple[str, ...] = field(repr=False)

    __repr__ = short_repr


@dataclass(frozen=True)
class StatsReport:
    """What `modinspect stats` found: per-module statistics over every batch, and where a first NaN/Inf came from.

    `modules` are in call order; `nonfinite_origin` names the module, op and source line of the first NaN/Inf;
    `diagnoses` are plain-language causes where the evidence is clear.
    """

    source: str
    device: str
    dtype: str | None
    mode: str  # eval | train
    batches: int
    backward: bool
    loss: str
    inputs: str
    modules: tuple[ModuleStats, ...] = field(repr=False)
    nonfinite_origin: NonfiniteOrigin | None
    nonfinite_found: bool
    notes: tuple[str, ...] = field(repr=False)
    # A second, independent origin in backward (when the first is in forward, the input, a weight or the loss).
    backward_origin: NonfiniteOrigin | None = None
    # plain-language causes where the evidence is clear
    diagnoses: tuple[str, ...] = field(default=(), repr=False)
    frozen: FrozenParams | None = None  # None: the parameters were not counted
    # globals the model's --weights pickle calls: torch.load would run them
    would_call: tuple[str, ...] = field(default=(), repr=False)

    __repr__ = short_repr

    def has(self, finding: str) -> bool:
        """Whether a `--fail-on` finding is present: nan, dead, mostly-dead, exploding or vanishing."""
        if finding == "nan":
            return self.nonfinite_found
        flags = {
            "dead": ("dead",),
            "mostly-dead": ("dead", "mostly-dead"),
            "exploding": ("exploding-grad",),
            "vanishing": ("vanishing-grad",),
        }[finding]
        return any(f in m.flags for m in self.modules for f in flags)


STATS_FINDINGS = ("nan", "dead", "mostly-dead", "exploding", "vanishing")


@dataclass(frozen=True)
class PairMismatch:
    """A name present on both sides whose shape or dtype differs."""

    name: str
    a: str
    b: str


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor present on both sides compares. Floats are over finite pairs; None when undefined."""

    name: str
    a_name: str
    b_name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    numel: int
    differing: int  # elements outside tolerance (NaN/Inf mismatches included); bytewise: of the rows that differ
    max_abs_diff: float | None  # None where values were not compared (a quantized pair: bytes only)
    mean_abs_diff: float | None
    rel_l2: float | None  # ‖a−b‖ / ‖a‖
    cosine: float | None
    nan_a: int
    nan_b: int
    inf_a: int
    inf_b: int
    status: str  # equal | close | changed
    note: str | None = (
        None  # how the pair was compared, where not by value ("quantized: compared byte for byte")
    )


@dataclass(frozen=True)
class ModuleRollup:
    module: str
    tensors: int
    changed: int
    max_abs_diff: float | None  # None where every changed tensor was compared byte for byte


@dataclass(frozen=True)
class ModuleStatus:
    """One module's verdict in a diff, under the roll-up's key ('features.3', 'classifier').

    `status`: changed (a tensor changed, or differs in shape or dtype, or is on one side only), unchanged
    (every tensor equal within tolerance), only_in_a or only_in_b (all its tensors are on that side alone).
    """

    module: str
    status: str
    tensors: int  # its names on either side


@dataclass(frozen=True)
class QuantError:
    """How much quantization changed one tensor: the float side against the dequantised side.

    `rel_error` is ‖w − ŵ‖ / ‖w‖ with w the float tensor, `snr_db` 10·log10(‖w‖² / ‖w − ŵ‖²) (None when they
    are equal: an infinite SNR), `cosine` their cosine similarity; None where undefined (a zero tensor).
    """

    name: str
    scheme: (
        str  # 'Q4_K', 'gptq 4-bit g128', 'bnb nf4', 'fp8 e4m3 block 128×128', 'qint8 per-tensor'
    )
    bits_per_weight: float  # bits stored per weight, scales and zeros included
    numel: int
    rel_error: float | None
    cosine: float | None
    snr_db: float | None


@dataclass(frozen=True)
class QuantModuleError:
    """QuantError over the dequantised tensors of one module (the roll-up's key), from their summed squares."""

    module: str
    tensors: int
    schemes: tuple[str, ...]
    bits_per_weight: float  # over the module's dequantised weights
    rel_error: float | None
    cosine: float | None
    snr_db: float | None


@dataclass(frozen=True)
class DiffReport:
    """What `modinspect diff A B` found: names on one side only, shape and dtype mismatches, changed tensors.

    `changed` is sorted worst first; `close` are equal within tolerance but not identical; `rollup` and
    `module_status` summarise per module. `differs` is the exit status's question.
    """

    a: str
    b: str
    format_a: str
    format_b: str
    only_in_a: tuple[str, ...] = field(repr=False)
    only_in_b: tuple[str, ...] = field(repr=False)
    shape_mismatch: tuple[PairMismatch, ...] = field(repr=False)
    dtype_mismatch: tuple[PairMismatch, ...] = field(repr=False)
    changed: tuple[TensorDiff, ...] = field(repr=False)  # sorted by severity
    close: tuple[TensorDiff, ...] = field(repr=False)
    equal: int  # tensors equal within tolerance (close ones included)
    identical: int  # of which bitwise/numerically identical
    compared: int
    # (name only one side stores, the tied name it matched through)
    aliased: tuple[tuple[str, str], ...] = field(repr=False)
    rollup: tuple[ModuleRollup, ...] = field(repr=False)
    hints: tuple[str, ...] = field(repr=False)
    tolerance: str
    nan_equal: bool
    bytewise: int = (
        0  # pairs of one quantized type (GGUF's Q4_K, ...) compared byte for byte, not by value
    )
    # every module, in first-seen order
    module_status: tuple[ModuleStatus, ...] = field(default=(), repr=False)
    # globals A's pickle calls: torch.load would run them
    would_call_a: tuple[str, ...] = field(default=(), repr=False)
    would_call_b: tuple[str, ...] = field(default=(), repr=False)
    # the side whose quantized tensors were dequantised to compare with the other's floats: "a", "b" or None
    dequantized: str | None = None
    # each dequantised tensor and module against its float, worst first
    quantization: tuple[QuantError, ...] = field(default=(), repr=False)
    quant_modules: tuple[QuantModuleError, ...] = field(default=(), repr=False)

    __repr__ = short_repr

    @property
    def differs(self) -> bool:
        """Whether anything differs: a name on one side only, a shape or dtype mismatch, a changed tensor."""
        return bool(
            self.only_in_a
            or self.only_in_b
            or self.shape_mismatch
            or self.dtype_mismatch
            or self.changed
        )


@dataclass(frozen=True)
class RunHeader:
    """A watch log's header: see modinspect.watching.log."""

    schema: str
    model: str
    every: int
    started: float
    device: str
    world_size: int


@dataclass(frozen=True)
class StepHistogram:
    step: int
    edges: tuple[float, ...] = field(repr=False)
    counts: tuple[int, ...] = field(repr=False)

    __repr__ = short_repr


LOG_SCALE_SPAN = 100.0
"""A series whose positive values span this factor or more (max / min) is drawn on a log scale."""

UPDATE_RATIO_BAND = (1e-4, 1e-1)
"""The update ratio ‖Δw‖/‖w‖ a parameter tensor is expected to keep: below it learns too slowly, above too fast."""


@dataclass(frozen=True)
class SeriesScale:
    """A series' finite values at a glance: their min and max over the run, and the scale views draw it on.

    `log` is True where the positive values span LOG_SCALE_SPAN× or more (max / min over the values > 0).
    """

    min: float
    max: float
    log: bool = False


@dataclass(frozen=True)
class ModuleSeries:
    """One module over the run's logged steps: every tuple is aligned with RunReport.steps.

    A value is None where the module was not logged at that step or its statistic was not finite
    (then `nan`/`inf` > 0) or undefined (dead_fraction of a non-ReLU, grad_norm without backward).
    """

    name: str
    type: str
    logged: tuple[bool, ...] = field(repr=False)
    std: tuple[float | None, ...] = field(repr=False)
    mean: tuple[float | None, ...] = field(repr=False)
    grad_norm: tuple[float | None, ...] = field(repr=False)
    dead_fraction: tuple[float | None, ...] = field(repr=False)
    nonfinite: tuple[bool, ...] = field(repr=False)  # any NaN/Inf in the output
    grad_nonfinite: tuple[bool, ...] = field(repr=False)  # any NaN/Inf in the output's gradient
    histograms: tuple[StepHistogram, ...] = field(repr=False)  # at the steps that have one
    first_bad_step: int | None
    grad_norm_mean: float | None  # gradient flow: over the finite logged values
    grad_norm_max: float | None
    flags: tuple[
        str, ...
    ] = ()  # exploding-grad | vanishing-grad: mean ‖∇out‖ 1000× off the median module's
    # std logged as null though the output was finite and had 2+ values: its sum of squares overflowed (inf)
    std_overflow: tuple[bool, ...] = field(default=(), repr=False)
    grad_nan: tuple[bool, ...] = field(
        default=(), repr=False
    )  # the gradient held a NaN (not just Inf)
    # ‖∇out‖ logged as null with no NaN/Inf in the gradient, in a module that has one at other steps: overflowed
    grad_overflow: tuple[bool, ...] = field(default=(), repr=False)
    # min and max of each series' finite values (None: none), `log` where they span 100× or more
    std_scale: SeriesScale | None = None
    grad_norm_scale: SeriesScale | None = None
    dead_fraction_scale: SeriesScale | None = None  # never log: drawn on its fixed 0–1 scale

    __repr__ = short_repr


@dataclass(frozen=True)
class ParamSeries:
    """One parameter tensor over the run's logged steps: every tuple is aligned with RunReport.steps.

    A value is None where the tensor was not logged at that step or the value was not finite, and
    `update_ratio` also where no update was known yet (its first logged step) or ‖w before‖ was 0.
    """

    name: str
    norm: tuple[float | None, ...] = field(repr=False)
    grad_norm: tuple[float | None, ...] = field(repr=False)
    update_norm: tuple[float | None, ...] = field(repr=False)
    update_ratio: tuple[float | None, ...] = field(repr=False)
    # the weights or their update were not finite at that step (‖w‖ or ‖Δw‖ null after its first record)
    update_nonfinite: tuple[bool, ...] = field(default=(), repr=False)
    update_ratio_scale: SeriesScale | None = None
    # the first logged steps whose update ratio left UPDATE_RATIO_BAND: below it (0, no update, aside), above it
    too_slow_at: int | None = None
    too_fast_at: int | None = None

    __repr__ = short_repr


@dataclass(frozen=True)
class BadStep:
    """The first logged step with a NaN/Inf, and where it came from.

    `recorded` is True when the log's own `nonfinite` record names the origin (module, op, line); False
    when the reader inferred the module from the counts (the first module, in logged order, with a NaN/Inf
    output; else the last one with a NaN/Inf gradient, backward running in reverse).
    """

    step: int
    module: str | None
    type: str | None
    phase: str
    op: str | None
    source: str | None
    code: str | None
    cause: str
    recorded: bool
    # every module with a NaN/Inf output or gradient at that step
    affected: tuple[str, ...] = field(repr=False)
    rank: int | None = None  # under torchrun: the rank whose shard held it
    explanation: str | None = None  # what watch saw in the updates before it, as the log has it

    __repr__ = short_repr


@dataclass(frozen=True)
class RunReport:
    """A watch log read back (`read_run_log`): every series aligned with `steps`, and the first bad step."""

    path: str
    header: RunHeader
    steps: tuple[int, ...] = field(repr=False)
    times: tuple[float, ...] = field(repr=False)
    loss: tuple[float | None, ...] = field(repr=False)
    modules: tuple[ModuleSeries, ...] = field(repr=False)
    params: tuple[ParamSeries, ...] = field(repr=False)
    first_bad: BadStep | None
    truncated: bool  # the last line was incomplete and skipped
    notes: tuple[str, ...] = field(repr=False)
    # the first optimizer param group's lr at each step (None: not finite); () when the log has none
    lr: tuple[float | None, ...] = field(default=(), repr=False)

    __repr__ = short_repr


@dataclass(frozen=True)
class ParamStats:
    """One parameter tensor at a logged step: its norm, its gradient's, and the last update's."""

    name: str
    norm: float | None
    grad_norm: float | None  # None when it had no gradient
    update_norm: float | None  # ‖w_after - w_before‖ of the logged step's update
    update_ratio: float | None  # update_norm / ‖w_before‖


@dataclass(frozen=True)
class WatchReport:
    """A `watch` run: statistics merged over every watched step, and its first NaN/Inf."""

    model: str
    device: str
    steps: int
    records: int  # step lines written to the log (or that would have been, without one)
    # merged over the whole run; grad_norm is the RMS over steps
    modules: tuple[ModuleStats, ...] = field(repr=False)
    params: tuple[ParamStats, ...] = field(repr=False)  # at the last logged step
    nonfinite_step: int | None
    nonfinite_origin: NonfiniteOrigin | None
    log: str | None
    mode: str = (
        "sentinel"  # sentinel: modules are the logged steps' statistics; window: every step's
    )
    explanation: str | None = None  # what the update history showed before the first NaN/Inf
    # mistakes seen in the training loop, once each
    loop_warnings: tuple[str, ...] = field(default=(), repr=False)

    __repr__ = short_repr
