"""stats overhead: forward+backward with modinspect's hooks against the bare model and the usual alternatives.

Compared side by side in one process, interleaved, so the ratios hold on a shared machine:
- bare: forward + backward, nothing else;
- modinspect: `collect_stats` (activation stats, dead units, output and parameter grad norms, NaN origin);
- item-hooks: the common per-hook pattern, forward hooks calling `.item()` on mean/std/min/max;
- empty-hooks: the floor of any per-module hook tool: a forward pre-hook and a forward hook on every module and
  a gradient hook on every output that requires grad, all doing nothing;
- detect_anomaly: `torch.autograd.detect_anomaly()` around forward + backward.

    python bench/bench_stats.py            # GPT-2 small (4x128 tokens) and a ResNet-style CNN
    python bench/bench_stats.py --smoke    # tiny models, one run: checks the script still works
    python bench/bench_stats.py --device cuda   # the same on a GPU, with device->host syncs per step;
                                                # without CUDA it prints one line saying it skipped
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_common import bench_parser
from torch import nn

from modinspect.run.stats import StatsOptions, collect_stats


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetish(nn.Module):
    """A ResNet-18-like stack: stem, 4 stages of 2 basic blocks, pooled classifier."""

    def __init__(self, width: int = 32, classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            *[nn.Sequential(BasicBlock(width), BasicBlock(width)) for _ in range(4)]
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def build(name: str, smoke: bool) -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(0)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = (
            GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256) if smoke else GPT2Config()
        )
        model = GPT2LMHeadModel(config).eval()
        ids = torch.randint(0, config.vocab_size, (2, 16) if smoke else (4, 128))
        return model, (ids,)
    model = ResNetish(width=8 if smoke else 32).eval()
    return model, (torch.randn(2 if smoke else 16, 3, 16 if smoke else 32, 16 if smoke else 32),)


def loss_of(output: Any) -> torch.Tensor:
    tensor = output.logits if hasattr(output, "logits") else output
    return tensor.float().sum()


def bare(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    loss_of(model(*inputs)).backward()
    model.zero_grad(set_to_none=True)


def modinspect_stats(model: nn.Module, inputs: tuple[Any, ...], device: str = "cpu") -> None:
    collect_stats(model, [(inputs, {})], options=StatsOptions(), device=device)


def item_hooks(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    stats: list[tuple[float, ...]] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        t = out[0] if isinstance(out, tuple) else out
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            d = t.detach()
            stats.append((d.mean().item(), d.std().item(), d.min().item(), d.max().item()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        bare(model, inputs)
    finally:
        for h in handles:
            h.remove()


def empty_hooks(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    def pre(_m: nn.Module, _i: Any) -> None:
        return None

    def grad(_g: torch.Tensor) -> None:
        return None

    def post(_m: nn.Module, _i: Any, out: Any) -> None:
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(grad)

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        bare(model, inputs)
    finally:
        for h in handles:
            h.remove()


def anomaly(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    with torch.autograd.detect_anomaly(check_nan=True):
        bare(model, inputs)


CONTENDERS: dict[str, Callable[[nn.Module, tuple[Any, ...]], None]] = {
    "bare": bare,
    "modinspect": modinspect_stats,
    "item-hooks": item_hooks,
    "empty-hooks": empty_hooks,
    "detect_anomaly": anomaly,
}


def contenders_on(device: str) -> dict[str, Callable[[nn.Module, tuple[Any, ...]], None]]:
    if device == "cpu":
        return CONTENDERS
    return {**CONTENDERS, "modinspect": functools.partial(modinspect_stats, device=device)}


def measure(name: str, runs: int, smoke: bool, device: str = "cpu") -> dict[str, list[float]]:
    """Wall times per contender, interleaved run by run (on CUDA, each run ends with a synchronize)."""
    import warnings

    model, inputs = build(name, smoke)
    cuda = device.startswith("cuda")
    if cuda:
        model, inputs = model.to(device), tuple(t.to(device) for t in inputs)
    contenders = contenders_on(device)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detect_anomaly warns that it is slow
        for fn in contenders.values():
            fn(model, inputs)  # warm-up
        for _ in range(runs):
            for key, fn in contenders.items():
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(model, inputs)
                if cuda:
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - start)
    return times


def count_syncs(name: str, smoke: bool, device: str) -> dict[str, int]:
    """Device->host synchronisations in one step of each contender, as torch's sync debug mode reports them."""
    import warnings

    model, inputs = build(name, smoke)
    model, inputs = model.to(device), tuple(t.to(device) for t in inputs)
    syncs: dict[str, int] = {}
    for key, fn in contenders_on(device).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(model, inputs)  # warm-up: first calls initialise kernels and allocators
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every sync, not one per source line
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn(model, inputs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs[key] = sum("synchroniz" in str(w.message) for w in caught)
    return syncs


def table(
    name: str, times: dict[str, list[float]], syncs: dict[str, int] | None = None
) -> list[str]:
    """Medians, and the median of per-run ratios: each run times every contender back to back."""
    bare_times = times["bare"]
    extra = (" device→host syncs per step |", " --- |") if syncs is not None else ("", "")
    lines = [
        "| model | contender | median s | min–max s | × bare (median of paired ratios) |"
        + extra[0],
        "| --- | --- | --- | --- | --- |" + extra[1],
    ]
    for key, values in times.items():
        med = statistics.median(values)
        ratio = statistics.median(v / b for v, b in zip(values, bare_times, strict=True))
        cell = f" {syncs[key]} |" if syncs is not None else ""
        lines.append(
            f"| {name} | {key} | {med:.3f} | {min(values):.3f}–{max(values):.3f} | {ratio:.2f} |"
            + cell
        )
    return lines


def gpu_header(device: str) -> tuple[list[str], bool]:
    """The GPU line that opens a CUDA run's section, and whether the device is there at all (CPU: no line)."""
    if not device.startswith("cuda"):
        return [], True
    if not torch.cuda.is_available():
        return [
            f"GPU: skipped, no CUDA device is available to this torch ({torch.__version__})"
        ], False
    return [
        f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    ], True


def main(argv: list[str] | None = None) -> list[str]:
    parser = bench_parser(__doc__, "tiny models, one run", runs=7)
    parser.add_argument("--models", default="gpt2,cnn")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda / cuda:N: also counts device->host syncs"
    )
    args = parser.parse_args(argv)
    runs = 1 if args.smoke else args.runs
    lines, available = gpu_header(args.device)
    if not available:
        print("\n".join(lines))
        return lines
    for name in args.models.split(","):
        syncs = (
            count_syncs(name, args.smoke, args.device) if args.device.startswith("cuda") else None
        )
        lines += table(name, measure(name, runs, args.smoke, args.device), syncs)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
