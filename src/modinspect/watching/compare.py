"""Two RunReports -> a RunComparison: the modules of both runs paired by name, with their last values."""

from __future__ import annotations

from modinspect.reports import ModuleSeries, RunReport
from modinspect.reports.compare import ModulePair, RunComparison


def _last(values: tuple[float | None, ...]) -> float | None:
    return values[-1] if values else None


def _bad(m: ModuleSeries | None) -> bool:
    return m is not None and bool(
        (m.nonfinite and m.nonfinite[-1]) or (m.grad_nonfinite and m.grad_nonfinite[-1])
    )


def compare_runs(a: RunReport, b: RunReport) -> RunComparison:
    """Pair the modules of runs `a` and `b` by name: `a`'s order, then those only `b` logged, in `b`'s order.

    Args:
        a: run A, as `read_run_log` reads it.
        b: run B.

    Returns:
        A RunComparison: both runs, and per module its last std and ‖∇out‖ in each (`ModulePair`).

    Example:
        >>> import pathlib, tempfile
        >>> logs = []
        >>> for lr in (0.01, 0.1):
        ...     model = torch.nn.Linear(4, 1)
        ...     optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        ...     logs.append(pathlib.Path(tempfile.mkdtemp()) / "stats.jsonl")
        ...     with modinspect.watch(model, every=2, log=logs[-1], optimizer=optimizer) as w:
        ...         for _ in range(4):
        ...             loss = model(torch.randn(8, 4)).pow(2).mean()
        ...             w.log_loss(loss)
        ...             loss.backward()
        ...             optimizer.step()
        ...             optimizer.zero_grad()
        >>> pair = modinspect.compare_runs(*map(modinspect.read_run_log, logs))
        >>> pair.a.lr, pair.b.lr, [m.name for m in pair.modules]
        ((0.01, 0.01), (0.1, 0.1), [''])
    """
    in_a = {m.name: m for m in a.modules}
    in_b = {m.name: m for m in b.modules}
    names = list(dict.fromkeys([*in_a, *in_b]))
    pairs = []
    for name in names:
        ma, mb = in_a.get(name), in_b.get(name)
        either = ma if ma is not None else mb
        assert either is not None
        pairs.append(
            ModulePair(
                name=name,
                type=either.type,
                in_a=ma is not None,
                in_b=mb is not None,
                std_a=_last(ma.std) if ma else None,
                std_b=_last(mb.std) if mb else None,
                grad_norm_a=_last(ma.grad_norm) if ma else None,
                grad_norm_b=_last(mb.grad_norm) if mb else None,
                bad_a=_bad(ma),
                bad_b=_bad(mb),
            )
        )
    return RunComparison(a=a, b=b, modules=tuple(pairs))
