"""`modinspect report --html`: every chart read back from the page, value by value, against the log.

The page is parsed (html.parser) into its charts' marks; each mark that stands for a logged value carries it
(`data-value`, a cell's tooltip), and the test compares it with the log read as plain JSON. A headless
Chromium screenshot at 1280×800 checks that every chart is drawn (pixels other than the background inside
its box) and that no axis label is a sentinel value.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import runlogs
from browser import find_chromium, load_page
from conftest import invoke
from modinspect.render.text import num
from modinspect.watching.log import Histogram, LogHeader, LogWriter, ModuleRecord

SENTINEL = 3.4028234663852886e38


@dataclass
class Mark:
    tag: str
    attrs: dict[str, str]
    title: str = ""
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


@dataclass
class Chart:
    name: str
    attrs: dict[str, str]
    marks: list[Mark] = field(default_factory=list)

    def find(self, tag: str, *classes: str) -> list[Mark]:
        return [m for m in self.marks if m.tag == tag and set(classes) <= m.classes]


class _Page(HTMLParser):
    """The page's charts (svg[data-chart]) with every element inside, its title and text; all text too."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self.stack: list[Mark] = []
        self.in_chart = False
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "svg" and "data-chart" in a:
            self.charts.append(Chart(a["data-chart"], a))
            self.in_chart = True
        elif self.in_chart:
            mark = Mark(tag, a)
            if tag != "title":
                self.charts[-1].marks.append(mark)
            self.stack.append(mark)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self.in_chart and tag != "svg":
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.in_chart and not self.stack:
            self.in_chart = False
        elif self.in_chart and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack:
            top = self.stack[-1]
            if top.tag == "title":
                self.stack[-2].title += data if len(self.stack) > 1 else ""
            else:
                top.text += data

    def chart(self, name: str, **attrs: str) -> Chart:
        found = self.all(name, **attrs)
        assert len(found) == 1, (name, attrs, len(found))
        return found[0]

    def all(self, name: str, **attrs: str) -> list[Chart]:
        return [
            c
            for c in self.charts
            if c.name == name and all(c.attrs.get(f"data-{k}") == v for k, v in attrs.items())
        ]


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def records(log: Path) -> list[dict[str, Any]]:
    """The log's step records, read as plain JSON (independently of modinspect's reader)."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()[1:]]


def html(log: Path, out: Path, *more: str | Path) -> _Page:
    result = invoke("report", log, *more, "--html", out)
    assert result.exit_code == 0, result.output
    return parse(out)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real training loop with its lr multiplied by 1e6 from step 30 (NaN/Inf at step 34)."""
    return runlogs.write_real_run(tmp_path_factory.mktemp("real") / "real.jsonl")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return runlogs.write_run(tmp_path / "run.jsonl")


def points(chart: Chart, series: str | None = None) -> list[tuple[int, float]]:
    return [
        (int(m.attrs["data-step"]), float(m.attrs["data-value"]))
        for m in chart.find("circle", "point")
        if series is None or m.attrs["data-series"] == series
    ]


def nonfinite_steps(chart: Chart) -> list[int]:
    return [int(m.attrs["data-step"]) for m in chart.find("path", "nonfinite")]


# --- curves -------------------------------------------------------------------------------------------------


def test_loss_and_lr_curves_are_the_logs_values(real: Path, tmp_path: Path) -> None:
    page = html(real, tmp_path / "r.html")
    steps = records(real)
    loss = page.chart("loss")
    assert points(loss) == [(s["step"], s["loss"]) for s in steps if s["loss"] is not None]
    assert nonfinite_steps(loss) == [s["step"] for s in steps if s["loss"] is None]
    assert nonfinite_steps(loss)[0] == 36  # the loss at 34 was still a (huge) number
    assert loss.attrs["data-scale"] == "log"  # 0.9 to 2e25
    assert len(loss.find("path", "line", "raw")) == len(loss.find("path", "line", "ema")) == 1
    lr = page.chart("lr")
    assert points(lr) == [(s["step"], s["optimizer"][0]["lr"]) for s in steps]
    assert (lr.attrs["data-scale"], float(lr.attrs["data-lo"]), float(lr.attrs["data-hi"])) == (
        "log",
        0.01,
        0.01 * 1e6,
    )
    # The y axis is labelled in decades over exactly that range: 1e-2 … 1e4.
    assert [m.text for m in lr.find("text", "tick", "y")] == ["1e-2", "1e0", "1e2", "1e4"]
    # the first bad step, as a dashed line on both
    bad = next(s["step"] for s in steps if s["nonfinite"] is not None)
    for chart in (loss, lr):
        assert [m.title for m in chart.find("path", "event")] == [f"first bad step: {bad}"]


def test_update_ratio_per_parameter_on_a_log_scale_with_the_1e_3_guide(
    real: Path, tmp_path: Path
) -> None:
    page = html(real, tmp_path / "r.html")
    steps = records(real)
    chart = page.chart("update-ratio")
    assert chart.attrs["data-scale"] == "log"
    names = [p["name"] for p in steps[0]["params"]]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name in names:
        logged = [
            (s["step"], p["update_ratio"])
            for s in steps
            for p in s["params"]
            if p["name"] == name and p["update_ratio"] is not None
        ]
        # a ratio of 0 (no update: a zero gradient) has no place on a log axis: a gap, not a point
        assert points(chart, name) == [(st, v) for st, v in logged if v > 0]
    every = [v for s in steps for p in s["params"] for v in [p["update_ratio"]] if v]
    # the axis: the whole decades around them
    lo, hi = math.floor(math.log10(min(every))), math.ceil(math.log10(max(every)))
    assert (float(chart.attrs["data-lo"]), float(chart.attrs["data-hi"])) == (10.0**lo, 10.0**hi)
    guide = chart.find("text", "guide-label")
    assert [g.text for g in guide] == ["0.001"] and len(chart.find("path", "guide")) == 1
    # the legend names each tensor
    text = "".join(page.text)
    assert all(f"{n}" in text for n in names)


def test_steps_per_second_from_the_time_stamps(real: Path, tmp_path: Path) -> None:
    page = html(real, tmp_path / "r.html")
    steps = records(real)
    want = [
        (b["step"], (b["step"] - a["step"]) / (b["time"] - a["time"]))
        for a, b in itertools.pairwise(steps)
        if b["time"] > a["time"]
    ]
    got = points(page.chart("steps-per-second"))
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-12)


def test_a_log_without_time_or_optimizer_says_so(tmp_path: Path) -> None:
    log = runlogs.write_run(tmp_path / "r.jsonl")
    lines = log.read_text(encoding="utf-8").splitlines()
    same = [lines[0], *(re.sub(r'"time":[0-9.e+]+', '"time":0', line) for line in lines[1:])]
    log.write_text("\n".join(same) + "\n", encoding="utf-8")
    page = html(log, tmp_path / "r.html")
    text = "".join(page.text)
    assert "No steps/s in this log." in text and "No lr in this log." in text
    assert not page.all("steps-per-second") and not page.all("lr")


# --- heatmaps -----------------------------------------------------------------------------------------------


def _cells(chart: Chart) -> dict[tuple[str, int], tuple[str, str]]:
    """(module, step) -> (state, what the tooltip says after the step)."""
    out = {}
    for m in chart.find("rect", "cell"):
        found = re.fullmatch(r"(.*), step (\d+): (.*)", m.title)
        assert found is not None, m.title
        module, step, says = found.groups()
        (state,) = m.classes - {"cell"}
        out[(module, int(step))] = (state, says)
    return out


def test_heatmap_cells_are_the_logs_values_on_a_log_scale_with_its_colour_bar(
    real: Path, tmp_path: Path
) -> None:
    page = html(real, tmp_path / "r.html")
    steps = records(real)
    for chart_name, key, bad in (
        ("std-heatmap", "std", ("nan", "inf")),
        ("grad-heatmap", "grad_norm", ("grad_nan", "grad_inf")),
    ):
        chart = page.chart(chart_name)
        cells = _cells(chart)
        assert len(cells) == len(steps) * len(steps[0]["modules"])
        values = []
        for s in steps:
            for m in s["modules"]:
                state, says = cells[(m["name"] or "(model)", s["step"])]
                if m[bad[0]] or m[bad[1]]:
                    assert state in ("nan", "inf"), (m["name"], s["step"])
                elif m[key] is None:
                    assert state in ("inf", "novalue")  # an overflowed std, or no gradient
                else:
                    assert (state, says) == ("value", num(m[key]))
                    values.append(m[key])
        positive = [v for v in values if v > 0]
        (bar,) = chart.find("g", "colour-bar")
        assert (float(bar.attrs["data-lo"]), float(bar.attrs["data-hi"])) == (
            min(positive),
            max(positive),
        )
        ends = [m.text for m in chart.find("text", "bar-end")]
        assert ends == [num(min(positive)), num(max(positive))]
        assert len(chart.find("rect", "bar-stop")) == 24


def test_nan_inf_overflow_no_value_and_not_logged_cells_are_told_apart(tmp_path: Path) -> None:
    records_ = []
    for i in range(3):
        step = runlogs.step_record(i, nonfinite_from=None, origin=None)
        fc1, act1, fc2, act2, sqrt, head = step.modules
        last = i == 2
        modules: tuple[ModuleRecord, ...] = (
            replace(fc1, std=1e30 if last else 1.0),
            replace(act1, std=float("inf") if last else 1.0),  # finite output: the std overflowed
            replace(fc2, std=float("nan") if last else 1.0, nan=3 if last else 0),
            replace(act2, grad_norm=float("inf") if last else 0.5, grad_inf=1 if last else 0),
            replace(sqrt, grad_norm=float("nan") if last else 0.5, grad_nan=2 if last else 0),
            replace(head, grad_norm=None),  # no backward
        )
        if i == 1:
            modules = modules[:5]  # head not logged at step 10
        records_.append(replace(step, modules=modules))
    log = tmp_path / "states.jsonl"
    with LogWriter(log, LogHeader(model="Net", every=10, device="cpu", started=0.0)) as w:
        for r in records_:
            w.write(r)
    page = html(log, tmp_path / "s.html")
    std, grad = _cells(page.chart("std-heatmap")), _cells(page.chart("grad-heatmap"))
    assert std[("fc1", 20)] == ("value", "1.00e+30")
    assert std[("act1", 20)] == ("inf", "overflowed (inf)")
    assert std[("fc2", 20)] == ("nan", "NaN/Inf in the output")
    assert std[("head", 10)] == ("missing", "not logged")
    assert grad[("act2", 20)] == ("inf", "Inf")
    assert grad[("sqrt", 20)] == ("nan", "NaN")
    assert grad[("head", 0)] == ("novalue", "no gradient")
    assert grad[("head", 10)] == ("missing", "not logged")
    fills = {
        m.attrs["fill"]
        for c in (page.chart("std-heatmap"), page.chart("grad-heatmap"))
        for m in c.find("rect", "cell")
        if not m.classes & {"value"}
    }
    assert len(fills) == 4  # nan, inf, no value, not logged: four colours, none from the scale


# --- histograms ---------------------------------------------------------------------------------------------


def _rows(chart: Chart) -> list[tuple[int, list[int]]]:
    rows: dict[int, list[int]] = {}
    for m in chart.find("rect", "bin"):
        step = int(m.title.split(":")[0].removeprefix("step "))
        rows.setdefault(step, []).append(int(m.title.rpartition(": ")[2]))
    return list(rows.items())


def test_histograms_over_time_are_the_logs_counts(run: Path, tmp_path: Path) -> None:
    page = html(run, tmp_path / "r.html")
    steps = records(run)
    for k, (module, _) in enumerate(runlogs.MODULES):
        chart = page.chart("histogram", module=module)
        logged = [s for s in steps if s["modules"][k]["histogram"] is not None]
        # 12 rows spread evenly over the steps that have a histogram, first and last included
        chosen = [logged[round(j * (len(logged) - 1) / 11)] for j in range(12)]
        assert _rows(chart) == [(s["step"], s["modules"][k]["histogram"]["counts"]) for s in chosen]
    page = html(run, tmp_path / "s.html", "--steps", "100,200")
    assert [s for s, _ in _rows(page.chart("histogram", module="fc1"))] == [100, 200]


def test_a_histogram_of_no_finite_value_is_a_row_that_says_so_never_a_sentinel_label(
    tmp_path: Path,
) -> None:
    """All NaN: the collector logs [3.4e38 … -3.4e38] as the range; no label may show it."""
    sentinel = tuple(SENTINEL - 2 * SENTINEL * k / 8 for k in range(9))
    log = tmp_path / "nan.jsonl"
    with LogWriter(log, LogHeader(model="Net", every=10, device="cpu", started=0.0)) as w:
        for i in range(4):
            step = runlogs.step_record(i, nonfinite_from=None, origin=None)
            fc1 = step.modules[0]
            if i == 3:
                fc1 = replace(fc1, histogram=Histogram(edges=sentinel, counts=(0,) * 8))
            w.write(replace(step, modules=(fc1, *step.modules[1:])))
    page = html(log, tmp_path / "n.html")
    chart = page.chart("histogram", module="fc1")
    assert [m.text for m in chart.find("text", "note")] == [
        "no finite values at this step (NaN/Inf)"
    ]
    assert [s for s, _ in _rows(chart)] == [0, 10, 20]
    numbers = [float(t) for t in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", "".join(page.text))]
    assert max(abs(v) for v in numbers) < 1e30


# --- the browser --------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed: `apt-get install -y chromium` (what .ci/run does where apt-get works)",
)

_BOXES = """JSON.stringify({
  background: getComputedStyle(document.body).backgroundColor,
  charts: [...document.querySelectorAll('svg[data-chart]')].map(svg => {
    const r = svg.getBoundingClientRect();
    return {chart: svg.dataset.chart, module: svg.dataset.module || null,
            x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
  }),
  labels: [...document.querySelectorAll('svg text')].map(t => t.textContent),
})"""


def _inked(image: Any, box: dict[str, float]) -> int:
    """Pixels inside the box that are not the white background."""
    x, y = round(box["x"]), round(box["y"])
    crop = image.crop((x, y, x + round(box["w"]), y + round(box["h"]))).convert("L")
    return sum(crop.histogram()[:250])


@needs_chromium
@pytest.mark.parametrize("runs", [1, 2])
def test_every_chart_is_drawn_at_1280x800_and_no_label_is_a_sentinel(
    real: Path, healthy: Path, tmp_path: Path, runs: int
) -> None:
    """One run, and two on the same axes (each heatmap and ridgeline twice)."""
    image_module = pytest.importorskip("PIL.Image")
    out, png = tmp_path / "r.html", tmp_path / "r.png"
    html(real, out, *([healthy] if runs == 2 else []))
    result = load_page(out, _BOXES, screenshot=png)
    assert result.errors == []
    found = json.loads(result.value)
    assert found["background"] in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
    charts = found["charts"]
    names = [c["chart"] for c in charts]
    for expected in ("loss", "lr", "update-ratio", "steps-per-second"):
        assert names.count(expected) == 1, expected
    for expected in ("gradient-flow", "std-heatmap", "grad-heatmap"):
        assert names.count(expected) == runs, expected
    assert names.count("histogram") == 4 * runs
    image = image_module.open(io.BytesIO(png.read_bytes()))
    assert (
        image.size[0] == 1280 or image.size[0] >= 1200
    )  # the viewport's width (less a scroll bar)
    for c in charts:
        assert c["w"] > 50 and c["h"] > 50, c
        assert c["x"] + c["w"] <= image.size[0] + 1, c  # nothing cut off at 1280 columns
        # marks, not just axes: at least 1% of the box is ink
        assert _inked(image, c) > 0.01 * c["w"] * c["h"], c
    numbers = [
        float(t)
        for label in found["labels"]
        for t in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", label)
    ]
    assert numbers and all(math.isfinite(v) and abs(v) < 1e38 for v in numbers)


# --- two runs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same loop and seed with no blow-up."""
    return runlogs.write_real_run(
        tmp_path_factory.mktemp("healthy") / "healthy.jsonl", blow_up_at=10**6
    )


def test_two_runs_share_every_axis(real: Path, healthy: Path, tmp_path: Path) -> None:
    page = html(real, tmp_path / "two.html", healthy)
    a, b = records(real), records(healthy)
    A, B = "A (real.jsonl)", "B (healthy.jsonl)"
    loss = page.chart("loss")
    assert points(loss, A) == [(s["step"], s["loss"]) for s in a if s["loss"] is not None]
    assert points(loss, B) == [(s["step"], s["loss"]) for s in b]
    lines = {
        m.attrs["data-series"]: m.attrs.get("stroke-dasharray") for m in loss.find("path", "raw")
    }
    assert lines == {A: None, B: "6 3"}  # run B dashed, and both named in the legend
    assert A in "".join(page.text) and B in "".join(page.text)
    assert points(page.chart("lr"), B) == [(s["step"], 0.01) for s in b]
    ratio = page.chart("update-ratio")
    assert points(ratio, "B · 2.bias") == [
        (s["step"], p["update_ratio"])
        for s in b
        for p in s["params"]
        if p["name"] == "2.bias" and p["update_ratio"]
    ]
    for chart, key in (("std-heatmap", "std"), ("grad-heatmap", "grad_norm")):
        maps = page.all(chart)
        assert [m.attrs["data-run"] for m in maps] == [A, B]
        bars = {
            (g.attrs["data-lo"], g.attrs["data-hi"])
            for m in maps
            for g in m.find("g", "colour-bar")
        }
        values = [m[key] for s in (*a, *b) for m in s["modules"] if m[key]]
        assert bars == {(repr(min(values)), repr(max(values)))}  # one scale for both runs
        cells = _cells(maps[1])
        assert all(
            cells[(m["name"] or "(model)", s["step"])] == ("value", num(m[key]))
            for s in b
            for m in s["modules"]
        )
    for module in ("", "0", "1", "2"):
        ridges = page.all("histogram", module=module)
        assert len(ridges) == 2
        assert [s for s, _ in _rows(ridges[0])] == [
            s for s, _ in _rows(ridges[1])
        ]  # the same steps


def test_two_runs_errors_are_one_line(real: Path, healthy: Path, tmp_path: Path) -> None:
    result = invoke("report", real, healthy, real)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: report takes one log, or two to compare, not 3: modinspect report A.jsonl [B.jsonl]\n",
    )
    out = tmp_path / "x.html"
    out.write_text("mine")
    result = invoke("report", real, tmp_path / "missing.jsonl", "--html", out)
    assert (
        result.stderr == f"error: {out} exists; pass --force to overwrite it\n"
    )  # before reading either
    result = invoke("report", real, healthy, "--html", healthy, "--force")
    assert result.stderr == f"error: {healthy} is also an input; write the result to another file\n"
    result = invoke("report", real, tmp_path / "missing.jsonl")
    assert result.stderr == f"error: {tmp_path / 'missing.jsonl'} does not exist\n"
    assert out.read_text() == "mine"


def _row_colours(chart: Chart, module: str) -> list[str]:
    return [
        m.attrs["style"].removeprefix("--row:")
        for m in chart.find("rect", "cell", "value")
        if m.title.startswith(f"{module}, step ")
    ]


def test_each_row_on_its_own_scale_is_one_checkbox_away(run: Path, tmp_path: Path) -> None:
    """fc1's std climbs 1.0 → 1.7 in eight levels while the head's sits at 2.0: on the shared scale fc1's row
    spans part of it; on its own scale (`--row`, swapped in by CSS) it runs from the darkest to the brightest."""
    from modinspect.render.html.svg import colour

    page = html(run, tmp_path / "r.html")
    chart = page.chart("std-heatmap")
    fc1 = _row_colours(chart, "fc1")
    assert len(fc1) == runlogs.STEPS
    levels = sorted({runlogs.std_of("fc1", i) for i in range(runlogs.STEPS)})
    lo, hi = math.log10(levels[0]), math.log10(levels[-1])
    want = [colour((math.log10(runlogs.std_of("fc1", i)) - lo) / (hi - lo)) for i in range(50)]
    assert fc1 == want and (fc1[0], fc1[-1]) == (colour(0), colour(1))
    ranges = [m.text for m in chart.find("text", "row-range")]
    assert ranges[0] == f"{num(levels[0], 3)} … {num(levels[-1], 3)}"
    checkbox = [a for tag, a in page.tags if tag == "input" and a.get("id") == "rows-std"]
    assert checkbox == [{"type": "checkbox", "id": "rows-std", "class": "rows"}]


@needs_chromium
def test_the_row_scale_checkbox_recolours_the_cells_without_script(
    run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    html(run, out)
    script = """JSON.stringify([...document.querySelectorAll('svg[data-chart="std-heatmap"] rect.cell.value')]
      .slice(0, 3).map(r => [getComputedStyle(r).fill, r.style.getPropertyValue('--row'), r.getAttribute('fill')]))"""
    before = json.loads(load_page(out, script).value)
    after = json.loads(
        load_page(out, script, after_load="document.getElementById('rows-std').click()").value
    )

    def rgb(hex_colour: str) -> str:
        r, g, b = (int(hex_colour.strip()[k : k + 2], 16) for k in (1, 3, 5))
        return f"rgb({r}, {g}, {b})"

    assert [fill for fill, _, _ in before] == [rgb(attr) for _, _, attr in before]
    assert [fill for fill, _, _ in after] == [rgb(row) for _, row, _ in after]
    assert [fill for fill, _, _ in before] != [fill for fill, _, _ in after]


def write_wide_run(path: Path, modules: int, params: int, steps: int = 4) -> Path:
    """A log of `modules` ReLU modules (each with a histogram) and `params` parameter tensors, two per layer."""
    from modinspect.watching.log import ParamRecord, StepRecord

    with LogWriter(path, LogHeader(model="Wide", every=1, device="cpu", started=0.0)) as w:
        for i in range(steps):
            mods = tuple(
                ModuleRecord(
                    f"m{k}",
                    "ReLU",
                    1,
                    64,
                    0.1,
                    1.0 + k,
                    -1.0,
                    1.0,
                    0.0,
                    0,
                    0,
                    k / modules,
                    0.5,
                    0,
                    0,
                    Histogram(edges=runlogs.EDGES, counts=runlogs.counts_of(k, i)),
                )
                for k in range(modules)
            )
            ps = tuple(
                ParamRecord(
                    f"l{k // 2}.{('weight', 'bias')[k % 2]}", 1.0, 0.1, 0.01, 10.0 ** -(k % 7)
                )
                for k in range(params)
            )
            w.write(StepRecord(step=i, time=float(i), loss=1.0, modules=mods, params=ps))
    return path


def test_a_model_of_thousands_of_modules_makes_a_bounded_page(tmp_path: Path) -> None:
    """2,500 modules and 100 tensors: 2,000 heatmap rows of at most 60 columns, 40 update-ratio curves (per
    layer: 50 layers, the 40 largest), 40 dead-fraction curves, 120 ridgelines; each cut said in a note."""
    from modinspect.render.html import MAX_CURVES, MAX_RIDGELINES
    from modinspect.render.html.heatmap import MAX_ROWS

    log = write_wide_run(tmp_path / "wide.jsonl", modules=2_500, params=100)
    out = tmp_path / "wide.html"
    page = html(log, out)
    assert out.stat().st_size < 40 * 2**20
    std = page.chart("std-heatmap")
    assert len(std.find("rect", "cell")) == MAX_ROWS * 4
    text = "".join(page.text)
    assert "… and 500 more modules, not drawn (`--json` has them all)." in text
    ratio = page.chart("update-ratio")
    assert len(ratio.find("path", "line")) == MAX_CURVES == 40
    assert (
        "100 tensors: one curve per layer, its tensors' largest ratio at each step; the 40 layers"
        in text
    )
    # per layer the larger of its two tensors' ratios: l0 has 1 and 0.1
    assert points(ratio, "l0")[0] == (0, 1.0)
    assert len(page.chart("dead-fraction").find("path", "line")) == MAX_CURVES
    assert len(page.all("histogram")) == MAX_RIDGELINES
    assert f"The first {MAX_RIDGELINES} modules with histograms, of 2,500" in text


def test_two_runs_with_hostile_file_and_module_names_are_escaped(tmp_path: Path) -> None:
    evil = '<img src=x onerror="alert(1)">'
    modules = ((evil, "Evil<b>Type</b>"), ("act</text><script>x()</script>", "ReLU"))
    a = runlogs.write_run(tmp_path / "<b>a.jsonl", nonfinite_from=None, modules=modules)
    b = runlogs.write_run(tmp_path / "b.jsonl", modules=modules)
    out = tmp_path / "two.html"
    page = html(a, out, b)
    raw = out.read_text(encoding="utf-8")
    assert "<img" not in raw and "<script" not in raw and "<b>" not in raw
    assert {tag for tag, _ in page.tags} & {"script", "img", "b"} == set()
    assert [c.attrs["data-run"] for c in page.all("std-heatmap")] == [
        "A (<b>a.jsonl)",
        "B (b.jsonl)",
    ]
    assert {c.attrs["data-module"] for c in page.all("histogram")} == {evil, modules[1][0]}


@needs_chromium
def test_the_smoothing_checkbox_shows_and_hides_the_ema_without_script(
    real: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    html(real, out)
    script = """JSON.stringify(['ema', 'raw'].map(k => {
      const p = document.querySelector('svg[data-chart="loss"] path.' + k);
      const s = getComputedStyle(p);
      return [s.display, s.strokeOpacity];
    }))"""
    on = json.loads(load_page(out, script).value)
    off = json.loads(
        load_page(out, script, after_load="document.getElementById('smooth').click()").value
    )
    assert on == [["inline", "1"], ["inline", "0.3"]]  # smoothed, over the faint raw values
    assert off == [["none", "1"], ["inline", "1"]]  # the raw values alone
