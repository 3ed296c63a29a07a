"""diff: every format pair, every category of difference, values checked against torch's own arithmetic."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file, save_model

from conftest import invoke
from models import Tied, TwoLayer, WithBatchNorm
from modinspect.analysis.diff import DiffOptions, diff_sources, tolerance_for
from modinspect.errors import UsageError
from modinspect.names import KeyMap, collapse_indices, rollup_key
from modinspect.reports import DiffReport, TensorDiff
from modinspect.run.source import open_source


def write_pth(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    torch.save(sd, path)
    return path


def write_st(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_legacy(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    return path


def write_sharded(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    path.mkdir()
    names = list(sd)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(path / shard))
        weight_map.update({k: shard for k in keys})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return path


WRITERS: dict[str, Callable[[Path, dict[str, torch.Tensor]], Path]] = {
    "pth": write_pth,
    "safetensors": write_st,
    "legacy": write_legacy,
    "sharded": write_sharded,
}


def diff(a: Path | str, b: Path | str, **options: Any) -> DiffReport:
    with open_source(str(a)) as sa, open_source(str(b)) as sb:
        return diff_sources(sa, sb, DiffOptions(**options))


def changed(report: DiffReport, name: str) -> TensorDiff:
    return next(d for d in report.changed if d.name == name)


@pytest.mark.parametrize("fmt_a", list(WRITERS))
@pytest.mark.parametrize("fmt_b", list(WRITERS))
def test_every_format_pair(tmp_path: Path, fmt_a: str, fmt_b: str) -> None:
    torch.manual_seed(0)
    sd = WithBatchNorm().state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.weight"][0, 0] += 1.0
    a = WRITERS[fmt_a](tmp_path / f"a.{fmt_a}", sd)
    b = WRITERS[fmt_b](tmp_path / f"b.{fmt_b}", other)
    report = diff(a, b)
    assert [d.name for d in report.changed] == ["fc.weight"]
    assert report.equal == len(sd) - 1 and report.compared == len(sd)
    assert (report.only_in_a, report.only_in_b) == ((), ())
    assert changed(report, "fc.weight").max_abs_diff == pytest.approx(1.0)
    same = diff(a, WRITERS[fmt_b](tmp_path / f"same.{fmt_b}", sd))
    assert not same.differs and same.identical == len(sd)


def test_metrics_match_torch_across_chunk_boundaries(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(37, 29, generator=g)
    b = a + torch.randn(37, 29, generator=g) * 1e-3
    b[3, 4] = 5.0
    pa, pb = write_st(tmp_path / "a.safetensors", {"w": a}), write_pth(tmp_path / "b.pth", {"w": b})
    for chunk in (7, 100, 1 << 20):
        d = changed(diff(pa, pb, chunk_elems=chunk), "w")
        delta = (a.double() - b.double()).abs()
        assert d.max_abs_diff == pytest.approx(delta.max().item(), rel=1e-6)
        assert d.mean_abs_diff == pytest.approx(delta.mean().item(), rel=1e-5)
        assert d.rel_l2 == pytest.approx((delta.norm() / a.double().norm()).item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(
            a.double().reshape(1, -1), b.double().reshape(1, -1)
        ).item()
        assert d.cosine == pytest.approx(cos, rel=1e-6)
        expected = (~torch.isclose(a, b, rtol=1.3e-6, atol=1e-5)).sum().item()
        assert d.differing == expected


def test_close_is_equal_but_not_identical(tmp_path: Path) -> None:
    a = torch.ones(100)
    b = a + 1e-7
    report = diff(
        write_st(tmp_path / "a.safetensors", {"w": a}),
        write_st(tmp_path / "b.safetensors", {"w": b}),
    )
    assert not report.differs
    assert (report.equal, report.identical, len(report.close)) == (1, 0, 1)
    exact = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors", exact=True)
    assert exact.differs and changed(exact, "w").differing == 100


def test_tolerance_options(tmp_path: Path) -> None:
    a, b = torch.zeros(10), torch.full((10,), 0.01)
    pa, pb = (
        write_st(tmp_path / "a.safetensors", {"w": a}),
        write_st(tmp_path / "b.safetensors", {"w": b}),
    )
    assert diff(pa, pb).differs
    assert not diff(pa, pb, atol=0.02).differs
    assert tolerance_for("float32", "bfloat16", DiffOptions()) == (1.6e-2, 1e-5)
    assert tolerance_for("int64", "int64", DiffOptions()) == (0.0, 0.0)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool, torch.uint8]
)
def test_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    base = torch.arange(24).reshape(4, 6) % 5
    a = base.to(dtype)
    b = a.clone()
    b[1, 2] = 1 if dtype != torch.bool else not bool(a[1, 2])
    report = diff(
        write_st(tmp_path / "a.safetensors", {"t": a}), write_pth(tmp_path / "b.pth", {"t": b})
    )
    d = changed(report, "t")
    assert d.differing == 1 and d.dtype_a == str(dtype).removeprefix("torch.")
    assert d.max_abs_diff == pytest.approx(abs(float(a[1, 2]) - float(b[1, 2])))


def test_bf16_values_beyond_bf16_tolerance(tmp_path: Path) -> None:
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    b = torch.tensor([1.0, 2.0, 3.5], dtype=torch.bfloat16)
    d = changed(
        diff(
            write_st(tmp_path / "a.safetensors", {"t": a}),
            write_st(tmp_path / "b.safetensors", {"t": b}),
        ),
        "t",
    )
    assert (d.differing, d.max_abs_diff) == (1, 0.5)


def test_nan_against_nan(tmp_path: Path) -> None:
    a = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0])
    b = torch.tensor([1.0, float("nan"), float("inf"), float("inf"), float("nan")])
    pa, pb = (
        write_st(tmp_path / "a.safetensors", {"t": a}),
        write_st(tmp_path / "b.safetensors", {"t": b}),
    )
    d = changed(diff(pa, pb), "t")
    assert d.differing == 2  # -inf vs inf, and 2.0 vs NaN
    assert (d.nan_a, d.nan_b, d.inf_a, d.inf_b) == (1, 2, 2, 2)
    assert changed(diff(pa, pb, nan_equal=False), "t").differing == 3
    same = diff(pa, write_st(tmp_path / "c.safetensors", {"t": a.clone()}))
    assert not same.differs
    assert diff(pa, tmp_path / "c.safetensors", nan_equal=False).differs


def test_zero_dim_and_empty_tensors(tmp_path: Path) -> None:
    a = {"scalar": torch.tensor(3.0), "empty": torch.zeros(0, 4), "count": torch.tensor(7)}
    b = {"scalar": torch.tensor(4.0), "empty": torch.zeros(0, 4), "count": torch.tensor(7)}
    report = diff(write_pth(tmp_path / "a.pth", a), write_st(tmp_path / "b.safetensors", b))
    assert [d.name for d in report.changed] == ["scalar"]
    assert changed(report, "scalar").max_abs_diff == 1.0
    assert report.equal == 2


def test_structural_differences(tmp_path: Path) -> None:
    a = {"x": torch.zeros(2, 3), "y": torch.zeros(4), "z": torch.zeros(2), "gone": torch.zeros(1)}
    b = {
        "x": torch.zeros(3, 2),
        "y": torch.zeros(4, dtype=torch.float16),
        "z": torch.zeros(2),
        "new": torch.zeros(1),
    }
    report = diff(write_st(tmp_path / "a.safetensors", a), write_st(tmp_path / "b.safetensors", b))
    assert report.only_in_a == ("gone",) and report.only_in_b == ("new",)
    assert [(m.name, m.a, m.b) for m in report.shape_mismatch] == [("x", "[2, 3]", "[3, 2]")]
    assert [(m.name, m.a, m.b) for m in report.dtype_mismatch] == [("y", "float32", "float16")]
    assert report.changed == () and report.differs


def test_tied_alias_on_one_side_is_not_a_difference(tmp_path: Path) -> None:
    model = Tied()
    write_pth(tmp_path / "tied.pth", model.state_dict())  # both names, one storage
    untied = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
    write_st(tmp_path / "dropped.safetensors", untied)  # what save_pretrained writes
    report = diff(tmp_path / "tied.pth", tmp_path / "dropped.safetensors")
    assert not report.differs
    assert report.aliased == (("head.weight", "embed.weight"),)
    save_model(model, str(tmp_path / "save_model.safetensors"))  # alias recorded in metadata
    assert not diff(tmp_path / "tied.pth", tmp_path / "save_model.safetensors").differs
    reverse = diff(tmp_path / "dropped.safetensors", tmp_path / "tied.pth")
    assert not reverse.differs and reverse.aliased == (("head.weight", "embed.weight"),)


def test_prefix_hint_strip_rename_include_exclude(tmp_path: Path) -> None:
    sd = TwoLayer().state_dict()
    write_st(tmp_path / "plain.safetensors", sd)
    write_pth(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in sd.items()})
    report = diff(tmp_path / "plain.safetensors", tmp_path / "ddp.pth")
    assert report.differs and len(report.only_in_b) == len(sd)
    assert report.hints == (
        f"5 of 5 keys only in {tmp_path}/ddp.pth differ from {tmp_path}/plain.safetensors by the prefix 'module.' "
        "(DataParallel/DistributedDataParallel): pass --strip-prefix module.",
    )
    stripped = diff(
        tmp_path / "plain.safetensors",
        tmp_path / "ddp.pth",
        keymap=KeyMap(strip_prefixes=("module.",)),
    )
    assert not stripped.differs and stripped.compared == len(sd)
    renamed = diff(
        tmp_path / "plain.safetensors",
        tmp_path / "ddp.pth",
        keymap=KeyMap(renames=((r"^module\.", ""),)),
    )
    assert not renamed.differs
    only_fc1 = diff(
        tmp_path / "plain.safetensors",
        tmp_path / "plain.safetensors",
        keymap=KeyMap(include=("fc1.*",)),
    )
    assert only_fc1.compared == 2
    no_scale = diff(
        tmp_path / "plain.safetensors",
        tmp_path / "plain.safetensors",
        keymap=KeyMap(exclude=("scale",)),
    )
    assert no_scale.compared == len(sd) - 1


def test_colliding_key_map_is_an_error(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors", {"a.w": torch.zeros(1), "b.w": torch.zeros(1)})
    with pytest.raises(UsageError, match=r"sends both 'a\.w' and 'b\.w'"):
        diff(p, p, keymap=KeyMap(renames=((r"^[ab]\.", ""),)))


def test_rollup_and_severity_order(tmp_path: Path) -> None:
    sd = {f"h.{i}.{p}": torch.ones(4) for i in range(3) for p in ("w", "b")}
    other = {k: v.clone() for k, v in sd.items()}
    other["h.1.w"] += 0.1
    other["h.2.b"] += 2.0
    report = diff(
        write_st(tmp_path / "a.safetensors", sd), write_st(tmp_path / "b.safetensors", other)
    )
    assert [d.name for d in report.changed] == ["h.2.b", "h.1.w"]
    assert [(r.module, r.tensors, r.changed) for r in report.rollup] == [
        ("h.1", 2, 1),
        ("h.2", 2, 1),
    ]


def test_collapse_and_rollup_helpers() -> None:
    names = [f"transformer.h.{i}.attn.weight" for i in (0, 1, 2, 3, 5)] + ["lm_head.weight"]
    assert collapse_indices(names) == ["transformer.h.{0-3,5}.attn.weight", "lm_head.weight"]
    assert collapse_indices(["a.0.w", "a.1.w"]) == ["a.0.w", "a.1.w"]
    assert rollup_key("transformer.h.3.mlp.c_fc.weight") == "transformer.h.3"
    assert rollup_key("lm_head.weight") == "lm_head"
    assert rollup_key("bias") == ""


def test_entry_point_with_weights_against_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoLayer()
    write_st(tmp_path / "w.safetensors", model.state_dict())
    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class TwoLayer(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1 = nn.Linear(4, 8); self.act = nn.ReLU(); self.fc2 = nn.Linear(8, 2)\n"
        "        self.register_buffer('scale', torch.ones(2))\n"
        "        self.register_buffer('cache', torch.zeros(3), persistent=False)\n"
    )
    result = invoke(
        "diff",
        "m.py:TwoLayer",
        "w.safetensors",
        "--weights-a",
        "w.safetensors",
        "--json",
        cwd=tmp_path,
    )
    doc = json.loads(result.stdout)
    # The live module's non-persistent buffer is not in its state_dict(), so it is not compared.
    assert doc["only_in_a"] == [] and doc["changed"] == [] and doc["equal"] == 5
    assert result.exit_code == 0


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    sd = TwoLayer().state_dict()
    write_st(tmp_path / "a.safetensors", sd)
    write_pth(tmp_path / "a.pth", sd)
    other = {k: v.clone() for k, v in sd.items()}
    other["fc2.bias"] += 1
    write_pth(tmp_path / "b.pth", other)
    same = invoke("diff", "a.safetensors", "a.pth", cwd=tmp_path)
    assert same.exit_code == 0 and "No differences within tolerance." in same.stdout
    result = invoke("diff", "a.safetensors", "b.pth", "--json", cwd=tmp_path)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert set(doc) >= {
        "only_in_a",
        "only_in_b",
        "shape_mismatch",
        "dtype_mismatch",
        "changed",
        "equal",
    }
    assert doc["equal"] == len(sd) - 1
    top = doc["changed"][0]
    assert top["name"] == "fc2.bias" and top["max_abs_diff"] == 1.0
    assert {"max_abs_diff", "mean_abs_diff", "rel_l2", "cosine", "differing"} <= set(top)
    text = invoke("diff", "a.safetensors", "b.pth", cwd=tmp_path)
    assert "fc2: 1 of 2 tensors changed, max |Δ| 1.0e+00" in text.stdout
    missing = invoke("diff", "a.safetensors", "nope.pth", cwd=tmp_path)
    assert (missing.exit_code, missing.stderr) == (2, "error: nope.pth does not exist\n")
    bad = invoke("diff", "a.safetensors", "a.pth", "--rename", "(=x", cwd=tmp_path)
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --rename '(=x': ")


def test_whole_pickled_model_diffs_without_its_code(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoLayer()
    torch.save(model, tmp_path / "whole.pt")
    write_st(tmp_path / "a.safetensors", model.state_dict())
    result = invoke("diff", "a.safetensors", "whole.pt", "--json", cwd=tmp_path)
    doc = json.loads(result.stdout)
    assert result.stderr == (  # torch.load would call the model's own class; nothing ran here
        "warning: torch.load would call models.TwoLayer: shown as stand-ins here, nothing ran; fully unpickling "
        "the file (torch.load without weights_only=True, or --unsafe-pickle) runs it\n"
    )
    # Every tensor of the state dict is equal; the pickled module's non-persistent buffer is not compared.
    assert (doc["changed"], doc["only_in_a"], doc["only_in_b"], doc["shape_mismatch"]) == (
        [],
        [],
        [],
        [],
    )
    assert doc["identical"] == len(model.state_dict()) and not doc["differs"]


def test_gpt2_from_config_saved_two_ways(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99)
    )
    model.save_pretrained(tmp_path / "hf")  # safetensors without the tied lm_head.weight
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    report = diff(tmp_path / "hf" / "model.safetensors", tmp_path / "sd.pth")
    assert not report.differs
    assert report.aliased == (("lm_head.weight", "transformer.wte.weight"),)
    # The directory's config.json builds the model, which names the tied head itself.
    whole = diff(tmp_path / "hf", tmp_path / "sd.pth")
    assert not whole.differs and whole.aliased == () and whole.only_in_a == whole.only_in_b == ()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0] += 0.5
    torch.save(model.state_dict(), tmp_path / "tuned.pth")
    tuned = diff(tmp_path / "hf", tmp_path / "tuned.pth")
    assert [d.name for d in tuned.changed] == ["transformer.h.1.mlp.c_fc.weight"]
    assert [(r.module, r.changed) for r in tuned.rollup] == [("transformer.h.1", 1)]
    assert (
        changed(tuned, "transformer.h.1.mlp.c_fc.weight").differing
        == model.transformer.h[1].mlp.c_fc.weight.shape[1]
    )
    max_abs_diff = changed(tuned, "transformer.h.1.mlp.c_fc.weight").max_abs_diff
    assert max_abs_diff is not None and math.isclose(max_abs_diff, 0.5, rel_tol=1e-6)


# ---------------------------------------------------------------- the byte-equality fast path


def _reports_both_ways(
    monkeypatch: pytest.MonkeyPatch, a: Path, b: Path, **options: object
) -> tuple[DiffReport, DiffReport]:
    """diff(a, b) with the byte path, and again with every pair through the tensor arithmetic alone."""
    from modinspect.sources.safetensors import SafetensorsSource

    fast = diff(a, b, **options)
    with monkeypatch.context() as m:
        m.setattr(SafetensorsSource, "byte_range", lambda self, name: None)
        m.setattr(SafetensorsSource, "byte_ranges", lambda self, names: [None for _ in names])
        slow = diff(a, b, **options)
    return fast, slow


SPECIAL = {
    "nan_payloads": (
        torch.tensor([1.0, float("nan"), 2.0]),
        torch.tensor([0x3F800000, 0x7FC00001, 0x40000000], dtype=torch.int32).view(torch.float32),
    ),
    "same_nan": (torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0])),
    "signed_zero": (torch.tensor([0.0, 1.0, -0.0]), torch.tensor([-0.0, 1.0, 0.0])),
    "within_tolerance": (torch.ones(50), torch.ones(50) + 1e-7),
    "outside_tolerance": (torch.ones(50), torch.ones(50) + 1e-3),
    "same_inf": (
        torch.tensor([float("inf"), -float("inf")]),
        torch.tensor([float("inf"), -float("inf")]),
    ),
    "identical": (torch.arange(10.0), torch.arange(10.0)),
    "ints": (torch.arange(6), torch.arange(6)),
    "bf16": (
        torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
        torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
    ),
    "bools": (torch.tensor([True, False]), torch.tensor([True, False])),
    "empty": (torch.zeros(0, 3), torch.zeros(0, 3)),
    "big_equal": (
        torch.arange(3 << 20, dtype=torch.float32),
        torch.arange(3 << 20, dtype=torch.float32),
    ),
}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exact": True},
        {"nan_equal": False},
        {"atol": 1e-2},
        {"chunk_elems": 7},
        {"chunk_elems": 300_000},
    ],
    ids=["default", "exact", "nan-unequal", "atol", "chunk7", "chunk300k"],
)
def test_byte_path_reports_exactly_what_the_arithmetic_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, object]
) -> None:
    big = SPECIAL["big_equal"][1].clone()
    big[-1] += 1  # differs only in the last of several 4 MiB pieces
    pairs = {**SPECIAL, "big_last": (SPECIAL["big_equal"][0].clone(), big)}
    if options.get("chunk_elems") == 7:  # 7-element chunks of 3M elements would take a minute
        pairs = {k: v for k, v in pairs.items() if not k.startswith("big")}
    a = write_st(tmp_path / "a.safetensors", {k: v[0] for k, v in pairs.items()})
    b = write_st(tmp_path / "b.safetensors", {k: v[1] for k, v in pairs.items()})
    fast, slow = _reports_both_ways(monkeypatch, a, b, **options)
    assert fast == slow


def test_byte_path_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_st(tmp_path / "a.safetensors", {k: v[0] for k, v in SPECIAL.items()})
    b = write_st(tmp_path / "b.safetensors", {k: v[1] for k, v in SPECIAL.items()})
    default, exact, strict_nan = diff(a, b), diff(a, b, exact=True), diff(a, b, nan_equal=False)
    assert [d.name for d in default.changed] == ["outside_tolerance"]
    assert [d.name for d in default.close] == ["within_tolerance"]
    # NaN with another payload and -0.0 against 0.0 are equal values with other bytes; --exact sees the bytes.
    assert (default.compared, default.equal, default.identical) == (12, 11, 10)
    assert {d.name for d in exact.changed} == {
        "nan_payloads",
        "signed_zero",
        "within_tolerance",
        "outside_tolerance",
    }
    assert {d.name for d in strict_nan.changed} == {"nan_payloads", "same_nan", "outside_tolerance"}
    assert changed(strict_nan, "same_nan").differing == 1


def test_identical_files_compare_without_importing_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    sd = {f"h.{i}.w": torch.randn(64, 3) for i in range(20)} | {"big": torch.randn(1 << 21)}
    a, b = write_st(tmp_path / "a.safetensors", sd), write_st(tmp_path / "b.safetensors", sd)
    code = (
        "import sys; from modinspect.run.source import open_source; from modinspect.analysis.diff import diff_sources\n"
        f"r = diff_sources(open_source({str(a)!r}), open_source({str(b)!r}))\n"
        "print(r.identical, r.compared, r.differs, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["21", "21", "False", "False"]


def test_sharded_and_aliased_names_take_the_byte_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = Tied()
    save_model(
        model, str(tmp_path / "saved.safetensors")
    )  # head.weight recorded as an alias of embed.weight
    sd = model.state_dict()
    write_sharded(tmp_path / "sharded", {k: v for k, v in sd.items() if k != "head.weight"})
    fast, slow = _reports_both_ways(
        monkeypatch, tmp_path / "saved.safetensors", tmp_path / "sharded"
    )
    assert fast == slow and not fast.differs and fast.identical == fast.compared == len(sd) - 1


# ---------------------------------------------------------------- linear in the number of keys


class _CountedKey(str):
    """A key that counts how often it is hashed or compared: the work of matching keys, in operations."""

    ops = 0

    def __hash__(self) -> int:
        _CountedKey.ops += 1
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        _CountedKey.ops += 1
        return str.__eq__(self, other)


class _CountedDict(dict[str, str]):
    """Not exactly a dict, so set(d) and friends hash each key again instead of reusing the stored hashes."""


class _CountingKeyMap(KeyMap):
    def apply(self, name: str) -> str | None:
        mapped = super().apply(name)
        return None if mapped is None else _CountedKey(mapped)

    def map_names(self, names: Iterable[str], side: str) -> dict[str, str]:
        return _CountedDict(super().map_names(names, side))


def _key_ops(n: int) -> int:
    """Key operations of diff_sources and plan_load on n keys each side: half shared, a quarter only on each side."""
    from modinspect.analysis.loading import plan_load
    from modinspect.sources.memory import TensorDictSource

    def source(names: list[str]) -> TensorDictSource:
        empty = torch.zeros(0)
        return TensorDictSource({k: empty for k in names}, "s", "test")

    shared = [f"h.{i}.w" for i in range(n // 2)]
    a = source(shared + [f"a.{i}" for i in range(n // 2)])
    b = source(shared + [f"module.b.{i}" for i in range(n // 2)])
    _CountedKey.ops = 0
    keymap = _CountingKeyMap(
        exclude=("no-such-key",)
    )  # a rule, so that every key goes through apply
    report = diff_sources(a, b, DiffOptions(keymap=keymap))
    plan = plan_load(a.tensors, b.tensors, keymap)
    assert (report.compared, len(report.only_in_b), len(plan.loaded)) == (n // 2, n // 2, n // 2)
    return _CountedKey.ops


def test_key_matching_is_linear_in_the_number_of_keys() -> None:
    small, large = _key_ops(2000), _key_ops(4000)
    assert small > 2000  # the count sees the work
    assert large <= 2.1 * small, (small, large)  # a set rebuilt per key made this 4x


def test_arithmetic_runs_on_one_torch_thread_and_gives_the_count_back(tmp_path: Path) -> None:
    from modinspect.sources import byteread

    seen: list[int] = []
    real = byteread.PairReader.chunk_pairs

    def spy(self: byteread.PairReader, *args: Any) -> object:
        seen.append(torch.get_num_threads())
        return real(self, *args)

    a = write_st(tmp_path / "a.safetensors", {"w": torch.zeros(10)})
    b = write_st(tmp_path / "b.safetensors", {"w": torch.ones(10)})
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(byteread.PairReader, "chunk_pairs", spy)
        assert changed(diff(a, b), "w").differing == 10
    assert seen == [1] and torch.get_num_threads() == before


def test_severity_is_relative_change_and_step_counters_rank_after_weights(tmp_path: Path) -> None:
    """One SGD step on a BatchNorm model: num_batches_tracked goes 0 → 1 (an undefined, 'infinite' relative
    change, which used to rank it first) and the weights move a little. Floating tensors come first, largest
    ‖a−b‖/‖a‖ first (a tensor that was all zeros in A changed by all of itself: 1), the counter last."""
    torch.manual_seed(0)
    model = WithBatchNorm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    (model(torch.randn(4, 3, 6, 6)) ** 2).sum().backward()
    opt.step()
    after = model.state_dict()
    report = diff(
        write_st(tmp_path / "a.safetensors", before), write_st(tmp_path / "b.safetensors", after)
    )

    def relative(k: str) -> float:
        a, b = before[k].double(), after[k].double()
        return float((b - a).norm() / a.norm()) if a.norm() > 0 else 1.0

    changed = {d.name for d in report.changed}
    floats = sorted(
        (k for k in changed if before[k].is_floating_point()),  # ties: the larger max |Δ| first
        key=lambda k: (-relative(k), -float((after[k] - before[k]).abs().max())),
    )
    assert [d.name for d in report.changed] == [*floats, "bn.num_batches_tracked"]
    assert (
        len(floats) >= 5 and relative(floats[-1]) < 0.5
    )  # the weights moved by a little, and still rank first
    assert all(
        d.rel_l2 == pytest.approx(relative(d.name))
        for d in report.changed
        if before[d.name].double().norm() > 0
    )


def test_dtype_and_shape_mismatch_lists_collapse_by_layer_index(tmp_path: Path) -> None:
    sd = {f"h.{i}.{p}": torch.ones(4) for i in range(6) for p in ("w", "b")}
    other = {k: (v.half() if k.endswith(".w") else v) for k, v in sd.items()}
    other["h.5.b"] = torch.ones(5)
    result = invoke(
        "diff",
        write_st(tmp_path / "a.safetensors", sd),
        write_st(tmp_path / "b.safetensors", other),
    )
    assert result.exit_code == 1
    out = result.stdout
    assert "Dtype mismatches (6)\n  h.{0-5}.w: float32 in A, float16 in B\n" in out
    assert "Shape mismatches (1)\n  h.5.b: [4] in A, [5] in B\n" in out
