"""A synthetic watch run, written with modinspect's own LogWriter: six modules, 50 logged steps, a NaN at step 300.

The series are chosen so that their sparklines can be written down by hand (see test_report.py):
- fc1's std is 1 + 0.1·(i // 7): eight levels, seven steps each (the last one step), so one cell per step
  reads ▁×7 ▂×7 … ▇×7 █;
- fc1's ‖∇out‖ is 10^((i % 8) − 4) before the NaN: on the log scale ▁▂▃▄▅▆▇█ repeating;
- act1's dead fraction is 0 for the first 25 steps and 1 after;
- from step 300 (i = 30) `sqrt` (a SqrtShift) produces NaN; `head` passes it on; every gradient is NaN.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modinspect.watching.log import (
    Histogram,
    LogHeader,
    LogWriter,
    ModuleRecord,
    NonfiniteRecord,
    ParamRecord,
    StepRecord,
)

MODULES = (
    ("fc1", "Linear"),
    ("act1", "ReLU"),
    ("fc2", "Linear"),
    ("act2", "ReLU"),
    ("sqrt", "SqrtShift"),
    ("head", "Linear"),
)
STEPS = 50
EVERY = 10
BAD_INDEX = 30  # step 300
BAD_STEP = BAD_INDEX * EVERY
STARTED = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
ORIGIN = NonfiniteRecord(
    module="sqrt",
    type="SqrtShift",
    phase="forward",
    op="aten::sqrt",
    source="train.py:42",
    code="        return torch.sqrt(x - 1)",
    cause="produced",
)
EDGES = tuple(-1 + 0.25 * k for k in range(9))


def std_of(name: str, i: int) -> float:
    if name == "fc1":
        return 1 + 0.1 * (i // 7)
    return {"act1": 0.5, "fc2": 0.8, "act2": 0.4, "sqrt": 0.3, "head": 2.0}.get(
        name, 1.0
    ) + 0.001 * i


def grad_of(name: str, i: int) -> float:
    if name == "fc1":
        return 10.0 ** ((i % 8) - 4)
    return {"act1": 0.02, "fc2": 0.05, "act2": 0.03, "sqrt": 0.04, "head": 0.5}.get(name, 0.1) * (
        1 + 0.01 * i
    )


def dead_of(name: str, i: int) -> float | None:
    if name == "act1":
        return 0.0 if i < 25 else 1.0
    if name == "act2":
        return 0.125
    return None


def counts_of(k: int, i: int) -> tuple[int, ...]:
    return tuple(1 + (i + k + j) % 5 for j in range(8))


def module_record(
    k: int, name: str, type_: str, i: int, nonfinite_from: int | None
) -> ModuleRecord:
    bad_forward = nonfinite_from is not None and i >= nonfinite_from and name in ("sqrt", "head")
    bad_grad = nonfinite_from is not None and i >= nonfinite_from
    return ModuleRecord(
        name=name,
        type=type_,
        calls=1,
        count=64,
        mean=float("nan") if bad_forward else 0.1 * k,
        std=float("nan") if bad_forward else std_of(name, i),
        min=None if bad_forward else -1.0,
        max=None if bad_forward else 1.0,
        zero_fraction=0.0,
        nan=16 if bad_forward else 0,
        inf=0,
        dead_fraction=dead_of(name, i),
        grad_norm=float("nan") if bad_grad else grad_of(name, i),
        grad_nan=64 if bad_grad else 0,
        grad_inf=0,
        histogram=None if bad_forward else Histogram(edges=EDGES, counts=counts_of(k, i)),
    )


def step_record(
    i: int,
    nonfinite_from: int | None = BAD_INDEX,
    origin: NonfiniteRecord | None = ORIGIN,
    modules: tuple[tuple[str, str], ...] = MODULES,
) -> StepRecord:
    return StepRecord(
        step=i * EVERY,
        time=STARTED + i,
        loss=float("nan") if nonfinite_from is not None and i >= nonfinite_from else 2.0 - 0.03 * i,
        modules=tuple(
            module_record(k, n, t, i, nonfinite_from) for k, (n, t) in enumerate(modules)
        ),
        params=(
            ParamRecord(
                name="fc1.weight",
                norm=4.0 + 0.01 * i,
                grad_norm=grad_of("fc1", i),
                update_norm=None if i == 0 else 0.004,
                update_ratio=None if i == 0 else 0.001,
            ),
        ),
        nonfinite=origin if nonfinite_from is not None and i == nonfinite_from else None,
    )


# A run with long, nested names and 15 parameter tensors (more than the report lists one by one): its
# update ratios are 1e-3 (1 + i/100) but for two planted ones, and `head`'s std grows 10× every 8 steps.
# From step 400 `head`'s output is NaN, and every gradient; FAST's weights from step 410.
# Logged as forward hooks fire: each module after its children.
BLOWUP_MODULES = (
    ("embed", "Embedding"),
    ("encoder.layers.0.self_attn.q_proj", "Linear"),
    ("encoder.layers.0.self_attn.k_proj", "Linear"),
    ("encoder.layers.0.self_attn.v_proj", "Linear"),
    ("encoder.layers.0.self_attn.out_proj", "Linear"),
    ("encoder.layers.0.self_attn", "Attention"),
    ("encoder.layers.0.mlp.fc1", "Linear"),
    ("encoder.layers.0.mlp.act", "ReLU"),
    ("encoder.layers.0.mlp.fc2", "Linear"),
    ("encoder.layers.0.mlp", "MLP"),
    ("encoder.layers.0", "Layer"),
    ("encoder", "Encoder"),
    ("head", "Linear"),
)
BLOWUP_PARAMS = (
    "embed.weight",
    *(f"{n}.{kind}" for n, t in BLOWUP_MODULES if t == "Linear" for kind in ("weight", "bias")),
)
FAST = "encoder.layers.0.mlp.fc2.weight"  # 0.5 from step 290: too fast
SLOW = "embed.weight"  # 2e-5 from its first update: too slow
FAST_FROM = 29
BLOWUP_NAN_FROM = (
    40  # head's output is NaN from step 400, and every gradient; FAST's weights from 410
)


def blowup_ratio(name: str, i: int) -> float | None:
    if i == 0:
        return None  # no update known at the first logged step
    if name == FAST and i >= FAST_FROM:
        return None if i > BLOWUP_NAN_FROM else 0.5
    if name == SLOW:
        return 2e-5
    return 1e-3 * (1 + i / 100)


def blowup_record(i: int) -> StepRecord:
    step = step_record(i, BLOWUP_NAN_FROM, None, BLOWUP_MODULES)
    modules = tuple(
        replace(m, std=10 ** (i / 8)) if m.name == "head" and not m.nan else m for m in step.modules
    )
    # The log lists `head` first, unlike the tree: the report lists them in the tree's order.
    params = tuple(
        ParamRecord(
            name=name,
            norm=None if name == FAST and i > BLOWUP_NAN_FROM else 2.0 + 0.01 * k + 0.001 * i,
            grad_norm=0.1,
            update_norm=None if blowup_ratio(name, i) is None else 0.01,
            update_ratio=blowup_ratio(name, i),
        )
        for k, name in enumerate(BLOWUP_PARAMS)
    )
    return replace(step, modules=modules, params=(*params[-2:], *params[:-2]))


def write_blowup_run(path: Path) -> Path:
    header = LogHeader(model="Net", every=EVERY, device="cpu", world_size=1, started=STARTED)
    with LogWriter(path, header) as log:
        for i in range(STEPS):
            log.write(blowup_record(i))
    return path


def write_run(
    path: Path,
    steps: int = STEPS,
    nonfinite_from: int | None = BAD_INDEX,
    origin: NonfiniteRecord | None = ORIGIN,
    modules: tuple[tuple[str, str], ...] = MODULES,
) -> Path:
    header = LogHeader(model="Net", every=EVERY, device="cpu", world_size=1, started=STARTED)
    with LogWriter(path, header) as log:
        for i in range(steps):
            log.write(step_record(i, nonfinite_from, origin, modules))
    return path


def write_real_run(
    path: Path,
    blow_up_at: int = 30,
    steps: int = 40,
    seed: int = 0,
    lr: float = 0.01,
    on_nonfinite: str = "warn",
    quiet: bool = True,
) -> Path:
    """A real training loop under modinspect.watch (every 2 steps, optimizer logged): a small MLP whose lr is
    multiplied by 1e6 from step `blow_up_at` (a planted blow-up; past `steps` for a healthy run). `quiet`
    silences watch's NonFiniteWarning (False: the caller asserts it)."""
    import warnings

    import torch

    import modinspect

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < blow_up_at else 1e6)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", modinspect.NonFiniteWarning)
        with modinspect.watch(
            model, every=2, log=path, optimizer=opt, on_nonfinite=on_nonfinite
        ) as w:
            for _ in range(steps):
                loss = (model(x) - y).pow(2).mean()
                w.log_loss(loss)
                loss.backward()
                opt.step()
                opt.zero_grad()
                sched.step()
    return path
