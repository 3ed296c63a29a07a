"""What `watch` does on every step between logged steps: the NaN/Inf sentinel, the update history, the loop checks.

Each piece costs a few device reductions per step and no host read of its own:
- `tensor_norms`: one multi-tensor norm (`torch._foreach_norm`) over a list of tensors, one read of each;
  a NaN or Inf anywhere makes its tensor's norm non-finite, so one `isfinite` over the stacked norms is
  the step's NaN/Inf check of the gradients.
- `UpdateHistory`: the last few steps' per-tensor weight norms on the device, the global norm and the
  largest relative change of a tensor's norm, and each optimizer param group's learning rate (host numbers),
  read only when a NaN/Inf needs explaining or a record is written.
- `LoopChecks`: one-time warnings for the mistakes a training loop makes that the hooks see for free.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

CPU_RNG_BYTES = 5056  # torch.get_rng_state(): the Mersenne Twister's state
HISTORY = 4  # steps of update history kept on the device
RATIO_ALARM = (
    1.0  # an update as large as the weights themselves: worth naming before the NaN it led to
)
FP32_NORM_LIMIT = math.sqrt(
    3.4028234663852886e38
)  # an fp32 norm above this overflowed (its square did)
NORMALISING = (
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
)


def caller_frame() -> tuple[str, str] | None:
    """("file:line", code) of the user's own frame that called the model: the innermost frame outside torch,
    modinspect, installed packages (transformers...) and the standard library. A few frames walked, no read."""
    import linecache
    import os
    import sys

    from modinspect.run.attribution import SourceLine

    found = _user_frame(sys._getframe(1))
    if found is None:
        return None
    frame = found[0]
    filename = frame.f_code.co_filename
    line = SourceLine(os.path.abspath(filename), frame.f_lineno, "")
    return line.short(), linecache.getline(filename, frame.f_lineno).strip()


def user_stacklevel() -> int:
    """`warnings.warn`'s stacklevel, for the function calling this one, that names the user's own line.

    The frame `caller_frame` would name: a loop warning raised while `watch()` is built points at the
    `watch(...)` call, one raised from a hook at the user's forward or backward call.
    """
    import sys

    found = _user_frame(sys._getframe(1))  # the caller: stacklevel 1
    return found[1] + 1 if found is not None else 2


def _user_frame(frame: Any) -> tuple[Any, int] | None:
    """The innermost user frame from `frame` outward, and how many frames out it is (0: `frame` itself)."""
    import os
    import sysconfig

    import torch

    global _SKIP
    if _SKIP is None:
        paths = sysconfig.get_paths()
        dirs = {
            os.path.dirname(os.path.abspath(torch.__file__)),
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # modinspect
            paths["purelib"],
            paths["platlib"],
            paths["stdlib"],
            paths["platstdlib"],
        }
        _SKIP = tuple(os.path.abspath(d) + os.sep for d in dirs)
    level = 0
    while frame is not None:
        filename = frame.f_code.co_filename
        user = _USER_FILE.get(filename)
        if user is None:  # decided once per file: the walk runs on every step's forward
            user = not filename.startswith("<") and not os.path.abspath(filename).startswith(_SKIP)
            _USER_FILE[filename] = user
        if user:
            return frame, level
        frame = frame.f_back
        level += 1
    return None


_SKIP: tuple[str, ...] | None = None
_USER_FILE: dict[str, bool] = {}  # code file -> whether it is the user's own


def weights_path(batch: Path) -> Path:
    """Where `save_batch=bad.pt` puts the weights beside the batch: bad.weights.safetensors."""
    return batch.with_name(batch.stem + ".weights.safetensors")


def save_weights(model: nn.Module, path: Path, step: int, force: bool) -> None:
    """The model's weights (the pre-step ones, put in place by the caller) and the RNG state, as safetensors.

    `safetensors.torch.save_model` keeps one copy of tied weights; the metadata holds the step, the model's
    training mode and the CPU RNG state of the forward (hex), for `modinspect stats --input` to restore.
    """
    import torch
    from safetensors.torch import save_model

    from modinspect.files import atomic_write

    metadata = {
        "modinspect": "watch.save_batch",
        "step": str(step),
        "training": str(bool(model.training)),
        "rng_cpu": bytes(torch.get_rng_state().tolist()).hex(),
    }
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=metadata), force=force)


def load_saved_weights(model: nn.Module, batch: Path) -> tuple[str, bool | None] | None:
    """Load the weights `watch(save_batch=...)` saved beside `batch` into `model` and restore its RNG state.

    Returns the one line to tell the user and the training mode the step ran in (None: not recorded), or None
    when there are no saved weights. Raises UsageError when they do not fit.
    """
    from safetensors import safe_open

    from modinspect.errors import UsageError

    path = weights_path(batch)
    if not path.is_file():
        return None
    import torch
    from safetensors.torch import load_model

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors' own error type for a broken header
        raise UsageError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:200]}); "
            f"move it away to run on the model's own weights"
        ) from None
    if metadata.get("modinspect") != "watch.save_batch":
        return None
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as exc:
        raise UsageError(f"{path} does not fit this model: {str(exc).splitlines()[0]}") from None
    if unexpected or len(missing) == len(model.state_dict()):
        raise UsageError(
            f"{path} does not fit this model: {len(unexpected)} unexpected and {len(missing)} missing "
            f"tensors; move it away to run on the model's own weights"
        )
    rng = metadata.get("rng_cpu")
    if rng:
        try:
            state = bytes.fromhex(rng[: 2 * CPU_RNG_BYTES + 2])
            if len(state) != CPU_RNG_BYTES:
                raise ValueError(f"{len(state)} bytes")
            torch.set_rng_state(torch.tensor(list(state), dtype=torch.uint8))
        except (ValueError, RuntimeError):
            raise UsageError(
                f"{path} holds no valid RNG state; move it away to run on the model's own weights"
            ) from None
    training = {"True": True, "False": False}.get(metadata.get("training", ""))
    step = metadata.get("step", "?")
    return (
        f"using the weights saved with the batch, {path} (step {step}, before its update)",
        training,
    )


def tensor_norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's 2-norm as a 0-dim float32 (or float64) device tensor, one `_foreach_norm` per dtype.

    Half-precision tensors are reduced in float32, so a norm over 65,504 is not taken for an Inf.
    """
    import torch

    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[torch.dtype, str], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, str(t.device)), []).append(i)
    for (dtype, _), idx in groups.items():
        half = dtype in (torch.float16, torch.bfloat16)
        norms = torch._foreach_norm(
            [tensors[i] for i in idx], 2, dtype=torch.float32 if half else None
        )
        for i, n in zip(idx, norms, strict=True):
            out[i] = n
    return [n for n in out if n is not None]


def group_hyperparameters(optimizer: Any) -> tuple[dict[str, float], ...]:
    """Each param group's scalar hyperparameters (lr, momentum, weight_decay, ...), host numbers only.

    A tensor learning rate (capturable optimizers) is read only here, on logged steps.
    """
    groups = []
    for group in getattr(optimizer, "param_groups", ()):
        values: dict[str, float] = {}
        for key, value in group.items():
            if key == "params" or isinstance(value, bool):
                continue
            if isinstance(value, int | float) or (hasattr(value, "numel") and value.numel() == 1):
                values[key] = float(value)
        groups.append(values)
    return tuple(groups)


def learning_rates(optimizer: Any) -> tuple[float | None, ...]:
    """Each param group's lr when it is a host number (no device read per step)."""
    out: list[float | None] = []
    for group in getattr(optimizer, "param_groups", ()):
        lr = group.get("lr")
        out.append(float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None)
    return tuple(out)


@dataclass(frozen=True)
class UpdateStep:
    """One step of the update history, on the host: what the weights' norms did at that step's update."""

    step: int
    global_norm: float  # ‖w‖ over every tensor after the step (float64 over the per-tensor norms)
    ratio: float  # the largest |‖w_t‖ − ‖w_t−1‖| / ‖w_t−1‖ over the tensors (nan when unknown)
    tensor: str | None  # the tensor it belongs to
    lrs: tuple[float | None, ...]  # each param group's learning rate at that step


class UpdateHistory:
    """The last HISTORY steps' per-tensor weight norms, kept on the device until something needs them.

    The change of a tensor's norm over a step, |‖w_t‖ − ‖w_t−1‖|, is a lower bound of ‖Δw_t‖ and equals it
    when the update dominates the weights, which is what a blow-up looks like; it needs no copy of the
    weights (the exact ‖Δw‖/‖w‖ of the logged step is in its record). Norms that overflow float32 are
    recomputed in float64 from the live weights when the history is read right after them.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rows: deque[tuple[int, torch.Tensor, tuple[float | None, ...]]] = deque(
            maxlen=HISTORY + 1
        )

    def push(self, step: int, norms: Sequence[torch.Tensor], lrs: tuple[float | None, ...]) -> None:
        """Keep the per-tensor weight norms after `step`'s update (a row of the same step is replaced)."""
        import torch

        if not norms:
            return
        row = torch.stack([n.to(norms[0].device) for n in norms]).to(torch.float64)
        if self.rows and self.rows[-1][0] == step:
            self.rows.pop()
        self.rows.append((step, row, lrs))

    def read(self, weights: Sequence[torch.Tensor] | None = None) -> list[UpdateStep]:
        """The history on the host (one transfer), oldest first; `weights`: the live weights of the last step."""
        import torch

        if not self.rows:
            return []
        stacked = torch.stack([n.to(self.rows[-1][1].device) for _, n, _ in self.rows]).cpu()
        if weights is not None:  # an fp32 norm that overflowed: the live weights are the last row's
            last = stacked[-1]
            for i in (
                torch.nonzero(~torch.isfinite(last) | (last > FP32_NORM_LIMIT)).flatten().tolist()
            ):
                if torch.isfinite(weights[i]).all():
                    last[i] = torch.linalg.vector_norm(
                        weights[i].detach().cpu(), dtype=torch.float64
                    )
        table = stacked.tolist()
        out = []
        for k, (step, _, lrs) in enumerate(self.rows):
            norms = table[k]
            global_norm = (
                math.sqrt(math.fsum(n * n for n in norms))
                if all(map(math.isfinite, norms))
                else math.inf
            )
            ratio, tensor = math.nan, None
            if k > 0:
                before = table[k - 1]
                for i, (a, b) in enumerate(zip(norms, before, strict=True)):
                    if b > 0 and math.isfinite(b) and not math.isnan(a):
                        r = abs(a - b) / b
                        if math.isnan(ratio) or r > ratio:
                            ratio, tensor = r, self.names[i]
            out.append(UpdateStep(step, global_norm, ratio, tensor, lrs))
        return out[1:] if len(out) > 1 else out


def explain(history: list[UpdateStep], bad_step: int, where: str | None) -> str | None:
    """'step 149 updated `wte.weight` by 3.2e+33× its norm (lr 1e+30 in group 0); at step 150 `ln_1` produced the first NaN/Inf'.

    None when no step of the history changed a tensor by RATIO_ALARM of its norm or more.
    """
    suspects = [
        h for h in history if h.step < bad_step and h.tensor is not None and h.ratio >= RATIO_ALARM
    ]
    if not suspects:
        return None
    h = suspects[-1]
    ratio = "more than 1e19" if math.isinf(h.ratio) else f"{h.ratio:.3g}"
    text = f"step {h.step} updated `{h.tensor}` by {ratio}× its norm"
    lrs = [(g, lr) for g, lr in enumerate(h.lrs) if lr is not None]
    if lrs:
        g, lr = max(lrs, key=lambda item: item[1])
        text += f" (lr {lr:.3g} in group {g})"
    at = f"`{where}` produced the first NaN/Inf" if where else "the first NaN/Inf appeared"
    return f"{text}; at step {bad_step} {at}"


class LoopChecks:
    """One-time warnings about the training loop itself; `found` lists them in the order they were seen."""

    def __init__(self, model: nn.Module, params: list[tuple[str, Any]], optimizer: Any) -> None:
        self.found: list[str] = []
        self._normalising = any(type(m).__name__ in NORMALISING for m in model.modules())
        self._model = model
        self._probe: tuple[Any, int, int] | None = (
            None  # (parameter, id of its .grad, ._version) at the last step
        )
        self._probe_param = next((p for _, p in params if p.requires_grad), None)
        self._eval_step = False
        if optimizer is not None:
            known = {
                id(p)
                for group in getattr(optimizer, "param_groups", ())
                for p in group.get("params", ())
            }
            missing = [n for n, p in params if p.requires_grad and id(p) not in known]
            if missing:
                shown = ", ".join(missing[:5]) + (
                    f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                )
                self.add(
                    f"{len(missing)} parameter(s) with requires_grad are in no optimizer param group "
                    f"(they never train): {shown}"
                )

    def add(self, message: str) -> None:
        if message not in self.found:
            self.found.append(message)
            import warnings

            warnings.warn(message, LoopWarning, stacklevel=user_stacklevel())

    def forward(self, grad_enabled: bool) -> None:
        """The first forward of a step: an evaluation forward (no grad) taken in train mode."""
        if not self._normalising:
            return
        if not grad_enabled and self._model.training:
            self.add(
                "a forward ran without grad (evaluation) while the model was in train mode: dropout and "
                "batch norm still act as in training; call model.eval() first"
            )
        self._eval_step = grad_enabled and not self._model.training

    def backward_started(self) -> None:
        """The first backward of a step: gradients never zeroed since the last step, a training step in eval mode."""
        probe = self._probe
        p = self._probe_param
        if (
            probe is not None
            and p is not None
            and p.grad is not None
            and id(p.grad) == probe[1]
            and p.grad._version == probe[2]
        ):
            self.add(
                "gradients were not zeroed between steps: they add up over every step since; call "
                "optimizer.zero_grad() once per step (gradient accumulation: one w.step() per optimizer step)"
            )
        if self._eval_step:
            self.add(
                "a training step (a backward) ran with the model in eval mode: dropout and batch norm are "
                "inert; call model.train() first"
            )

    def step_ended(self) -> None:
        p = self._probe_param
        self._probe = (
            (p, id(p.grad), p.grad._version) if p is not None and p.grad is not None else None
        )
        self._eval_step = False


class LoopWarning(UserWarning):
    """watch saw a mistake in the training loop (given once per kind, listed in the report)."""
