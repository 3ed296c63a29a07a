"""build_tree: counts with each storage once, tied names, buffers, collapse, depth and filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models import PartlyFrozen, Tied, TwoLayer
from modinspect.analysis.tree import build_tree
from modinspect.reports import ModuleNode
from modinspect.run.source import open_source
from modinspect.sources import ModuleInfo, Source, TensorInfo
from modinspect.sources.module import ModuleSource


def live(model: nn.Module) -> ModuleSource:
    return ModuleSource(model, "live", "entrypoint")


def child(node: ModuleNode, short: str) -> ModuleNode:
    return next(c for c in node.children if c.short == short)


def test_two_layer_totals_match_torch() -> None:
    model = TwoLayer()
    report = build_tree(live(model))
    t = report.totals
    assert t.params == sum(p.numel() for p in model.parameters()) == 58
    assert (t.trainable, t.frozen) == (58, 0)
    assert (t.buffers, t.persistent_buffers, t.non_persistent_buffers) == (5, 2, 3)
    assert t.bytes == (58 + 5) * 4
    assert t.tensors == 6
    assert [(m.name, m.type, m.params) for m in report.modules] == [
        ("", "TwoLayer", 58),
        ("fc1", "Linear", 40),
        ("act", "ReLU", 0),
        ("fc2", "Linear", 18),
    ]
    kinds = {r.name: (r.kind, r.persistent) for r in report.tensors}
    assert kinds["scale"] == ("buffer", True)
    assert kinds["cache"] == ("buffer", False)
    assert kinds["fc1.weight"] == ("parameter", None)
    assert report.training is True and report.module_known


def test_frozen_parameters_are_counted_apart() -> None:
    model = PartlyFrozen()
    report = build_tree(live(model))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 40
    assert (report.totals.trainable, report.totals.frozen) == (18, 40)
    rows = {m.name: m for m in report.modules}
    assert rows["fc1"].trainable == 0 and rows["fc2"].trainable == 18


def test_tied_weights_count_once_and_are_named() -> None:
    model = Tied()
    report = build_tree(live(model))
    assert (
        report.totals.params == sum(p.numel() for p in model.parameters()) == 50 * 8 + 3 * (64 + 8)
    )
    assert report.tied == (("embed.weight", "head.weight"),)
    alias = {r.name: r.alias_of for r in report.tensors}
    assert alias["head.weight"] == "embed.weight" and alias["embed.weight"] is None
    # The head still owns the weight it uses: its own count includes it.
    assert {m.name: m.params for m in report.modules}["head"] == 400
    assert report.totals.bytes == report.totals.params * 4


def test_identical_blocks_collapse_into_one_run() -> None:
    report = build_tree(live(Tied()))
    blocks = child(report.root, "blocks")
    assert len(blocks.children) == 1
    run = blocks.children[0]
    assert (run.repeat, run.row.name, run.last_name) == (3, "blocks.0", "blocks.2")
    assert (run.row.params, run.run_params, run.run_bytes) == (72, 216, 216 * 4)
    expanded = child(build_tree(live(Tied()), expand=True).root, "blocks")
    assert [c.row.name for c in expanded.children] == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(c.repeat == 1 for c in expanded.children)


def test_runs_break_on_different_shapes_and_gaps() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                [nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)]
            )
            self.seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))

    root = build_tree(live(M())).root
    layers = child(root, "layers")
    assert [(c.row.name, c.repeat) for c in layers.children] == [("layers.0", 2), ("layers.2", 2)]
    # seq.0 and seq.2 are alike but not adjacent: no run.
    assert [(c.row.name, c.repeat) for c in child(root, "seq").children] == [
        ("seq.0", 1),
        ("seq.1", 1),
        ("seq.2", 1),
    ]


def test_runs_break_where_a_block_is_in_another_mode() -> None:
    """A block in eval among blocks in training is shown apart, with its mark, not folded into the run."""
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Dropout()) for _ in range(5)]).train()
    model[2].eval()
    model.get_submodule("4.1").eval()  # a child's mode breaks its block's run too
    root = build_tree(live(model)).root
    assert [(c.row.name, c.repeat, c.row.training) for c in root.children] == [
        ("0", 2, True),
        ("2", 1, False),
        ("3", 1, True),
        ("4", 1, True),
    ]


def test_depth_limits_the_view_not_the_totals() -> None:
    report = build_tree(live(Tied()), depth=1)
    assert report.totals.params == 616
    names = [c.row.name for c in report.root.children]
    assert names == ["embed", "blocks", "head"]
    assert all(not c.children and not c.tensors for c in report.root.children)
    assert child(report.root, "blocks").hidden == 3
    assert child(report.root, "embed").hidden == 1
    assert len(report.modules) == 7  # the JSON list stays complete


def test_filter_keeps_matches_and_their_ancestors() -> None:
    report = build_tree(live(TwoLayer()), pattern="fc1*")
    assert [c.row.name for c in report.root.children] == ["fc1"]
    assert report.root.tensors == ()
    assert [r.name for r in report.tensors] == ["fc1.weight", "fc1.bias"]
    assert [m.name for m in report.modules] == ["fc1"]
    assert report.totals.params == 58  # totals describe the whole source
    prefix = build_tree(live(Tied()), pattern="blocks.1")
    assert [r.name for r in prefix.tensors] == ["blocks.1.weight", "blocks.1.bias"]


def test_bare_state_dict_counts_every_tensor_and_knows_no_classes(tmp_path: Path) -> None:
    model = TwoLayer()
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    report = build_tree(open_source(str(tmp_path / "sd.pth")))
    assert not report.module_known
    t = report.totals
    assert t.params == 58 + 2  # parameters plus the persistent buffer: kinds are unknown
    assert (t.trainable, t.frozen, t.buffers) == (None, None, None)
    assert all(m.type is None for m in report.modules)
    assert {r.kind for r in report.tensors} == {"unknown"}
    assert [m.name for m in report.modules] == ["", "fc1", "fc2"]


def test_dtype_breakdown() -> None:
    model = TwoLayer()
    model.fc2.to(torch.float16)
    report = build_tree(live(model))
    by = {d.dtype: (d.elements, d.bytes) for d in report.by_dtype}
    assert by == {"float32": (40 + 5, 45 * 4), "float16": (18, 36)}
    assert report.totals.bytes == 45 * 4 + 36


def test_meta_model_counts_like_the_real_one() -> None:
    with torch.device("meta"):
        meta = Tied()
    real = build_tree(live(Tied()))
    on_meta = build_tree(live(meta))
    assert on_meta.totals == real.totals
    assert on_meta.tied == real.tied


def test_shared_submodule_is_listed_under_both_names_and_counted_once() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = self.a

    report = build_tree(live(Shared()))
    assert report.totals.params == 12
    assert [m.name for m in report.modules] == ["", "a", "b"]
    assert report.tied == (("a.weight", "b.weight"), ("a.bias", "b.bias"))


@pytest.mark.parametrize("train", [True, False])
def test_training_flags_are_reported_per_module(train: bool) -> None:
    model = TwoLayer().train(train)
    model.fc2.train(not train)
    rows = {m.name: m.training for m in build_tree(live(model)).modules}
    assert rows == {"": train, "fc1": train, "act": train, "fc2": not train}


def test_a_name_of_1000_parts_is_a_tree_1000_deep_without_recursion(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from conftest import invoke

    deep = ".".join(["m"] * 999) + ".w"
    save_file({deep: torch.ones(2, 3), "x": torch.ones(1)}, str(tmp_path / "deep.safetensors"))
    rendered = invoke("tree", tmp_path / "deep.safetensors")
    assert rendered.exit_code == 0, rendered.stderr
    as_json = invoke("tree", tmp_path / "deep.safetensors", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert len(doc["modules"]) == 1000  # the root and 999 'm's
    assert [m["params"] for m in doc["modules"]] == [7] + [6] * 999
    report = build_tree(
        open_source(str(tmp_path / "deep.safetensors")), depth=2, pattern=".".join(["m"] * 500)
    )
    assert report.root.children[0].children[0].hidden == 1
    assert [r.name for r in report.tensors] == [deep]


def _oracle_rows(src: Source) -> dict[str, tuple[int, int, int | None]]:
    """Each module's (params, bytes, trainable), the slow way: its subtree's tensors in depth-first order
    (own tensors first, then each child's), each storage counted once as its first holder there."""
    known = src.modules is not None
    created = [
        ""
    ]  # modules in creation order, each after its parent: modules first, then tensors' parents
    for name in [m.name for m in src.modules or ()] + [
        t.name.rpartition(".")[0] for t in src.tensors
    ]:
        chain = []
        while name not in created:
            chain.append(name)
            name = name.rpartition(".")[0]
        created += reversed(chain)

    def subtree(name: str) -> list[TensorInfo]:
        own = [t for t in src.tensors if t.name.rpartition(".")[0] == name]
        kids = [m for m in created if m and m.rpartition(".")[0] == name]
        return own + [t for k in kids for t in subtree(k)]

    rows = {}
    for name in created:
        seen, unique = set(), []
        for t in subtree(name):
            key = t.storage if t.storage is not None else f"name:{t.name}"
            if key not in seen:
                seen.add(key)
                unique.append(t)
        params = [t for t in unique if t.kind == "parameter" or (t.kind == "unknown" and not known)]
        rows[name] = (
            sum(t.numel for t in params),
            sum(t.nbytes for t in unique),
            sum(t.numel for t in params if t.requires_grad) if known else None,
        )
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_counts_match_a_brute_force_count_with_tied_storages_anywhere(seed: int) -> None:
    import random

    rng = random.Random(seed)
    parts = ["a", "b", "h", "0", "1", "2", "w", "bias"]
    runs = 0
    for _ in range(150):
        names = list(
            dict.fromkeys(
                ".".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
                for _ in range(rng.randint(1, 25))
            )
        )
        if rng.random() < 0.5:  # runs of identical blocks, storages shared within and across them
            names = [
                f"h.{i}.{leaf}" for i in range(rng.randint(2, 5)) for leaf in ("w", "a.b")
            ] + names[:3]
        known = rng.random() < 0.5
        tensors = [
            TensorInfo(
                n,
                (2,)
                if n.startswith("h.")
                else tuple(rng.choice([1, 2, 3]) for _ in range(rng.randint(0, 2))),
                "float32",
                rng.randint(0, 40),
                rng.choice(["parameter", "buffer", "unknown"]) if known else "unknown",
                rng.choice(["s0", "s1", "s2", None, f"own:{n}", f"own:{n}"]),
                rng.choice([True, False, None]),
            )
            for n in names
        ]
        modules = (
            [ModuleInfo(m, "M") for m in {"", *(n.rpartition(".")[0] for n in names)}]
            if known
            else None
        )
        src = Source("x", "test", tensors, modules=modules)
        report = build_tree(src)
        expected = _oracle_rows(src)
        runs += sum(1 for c in report.root.children for g in c.children if g.repeat > 1)
        assert {m.name: (m.params, m.bytes, m.trainable) for m in report.modules} == expected
        stack = [report.root]
        while stack:  # a run counts each storage once across its members
            node = stack.pop()
            stack.extend(node.children)
            if node.repeat > 1:
                first = int(node.short)
                prefix = node.row.name.rpartition(".")[0]
                members = [
                    f"{prefix}.{i}" if prefix else str(i) for i in range(first, first + node.repeat)
                ]
                run = Source(
                    "x",
                    "test",
                    [t for t in tensors if any(t.name.startswith(m + ".") for m in members)],
                    modules=modules,
                )
                assert (node.run_params, node.run_bytes) == _oracle_rows(run)[""][:2]
    assert runs >= 20  # the collapsed runs were exercised


# ---------------------------------------------------------------- linear in the number of tensors
def _tree_ops(tensors: list[TensorInfo], modules: list[ModuleInfo] | None = None) -> int:
    """Python and builtin calls that building the tree makes (sys.setprofile): work counted, not timed."""
    import sys

    src = Source("x", "test", tensors, modules=modules)
    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        report = build_tree(src)
    finally:
        sys.setprofile(None)
    assert report.totals.tensors == len(tensors)
    return calls


def _flat(n: int) -> list[TensorInfo]:
    return [TensorInfo(f"w{i}", (4,), "float32", 16) for i in range(n)]


def _layered(
    n: int,
) -> list[TensorInfo]:  # MoE-like: layers of 8 experts of 2 tensors, every 4th layer different
    return [
        TensorInfo(
            f"model.layers.{i // 16}.mlp.experts.{i // 2 % 8}.w{i % 2}",
            (4, 8 if i // 16 % 4 else 2),
            "bfloat16",
            64 if i // 16 % 4 else 16,
            "parameter",
        )
        for i in range(n)
    ]


def _tied(n: int) -> list[TensorInfo]:  # every block's weight one storage, as tied embeddings are
    return [
        TensorInfo(
            f"h.{i // 2}.{'w' if i % 2 else 'b'}",
            (4,),
            "float32",
            16,
            "parameter",
            "shared" if i % 2 else f"own{i}",
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("layout", [_flat, _layered, _tied])
def test_tree_building_is_linear_in_the_number_of_tensors(layout: object) -> None:
    make = layout
    assert callable(make)
    small, large = _tree_ops(make(2000)), _tree_ops(make(4000))
    assert small > 2000  # the count sees the work
    assert large <= 2.1 * small, (small, large)  # rescanning each subtree per tensor made this 4x


def test_tree_building_is_linear_with_the_modules_known() -> None:
    def modules(tensors: list[TensorInfo]) -> list[ModuleInfo]:
        names = {""} | {t.name.rpartition(".")[0] for t in tensors}
        return [ModuleInfo(m, "Block") for m in sorted(names)]

    small_t, large_t = _layered(2000), _layered(4000)
    small, large = _tree_ops(small_t, modules(small_t)), _tree_ops(large_t, modules(large_t))
    assert large <= 2.1 * small, (small, large)


# ---------------------------------------------------------------- bounded in the length of deep names
def test_module_names_are_bounded_in_total(tmp_path: Path) -> None:
    """Each module keeps its full name: 1,000 parts of 1,000 characters would be 500 MB of names; refused."""
    from safetensors.torch import save_file

    from modinspect.analysis import tree
    from modinspect.errors import CorruptFileError

    parts = [f"{i:04d}" + "m" * 996 for i in range(1000)]
    save_file({".".join(parts): torch.ones(1)}, str(tmp_path / "long.safetensors"))
    with (
        open_source(str(tmp_path / "long.safetensors")) as src,
        pytest.raises(CorruptFileError) as caught,
    ):
        build_tree(src)
    assert str(caught.value) == (
        f"{tmp_path / 'long.safetensors'} nests modules so deep (a module name of 999 dotted parts and 999,998 "
        "characters) that all their names would add up to more than 67,108,864 characters"
    )
    # Under the bound every module is built, whatever its depth: 300 parts of 1,000 characters is 45 MB of names.
    save_file({".".join(parts[:300]): torch.ones(1)}, str(tmp_path / "shorter.safetensors"))
    with open_source(str(tmp_path / "shorter.safetensors")) as src:
        report = build_tree(src)
    assert (
        len(report.modules) == 300
        and sum(len(r.name) for r in report.modules)
        == sum(1001 * k - 1 for k in range(1, 300))
        < tree.MAX_MODULE_NAME_CHARS
    )


def test_a_long_deep_name_costs_little_cpu(tmp_path: Path) -> None:
    """Regression: `tree --json` of a 1 MB name of 1,000 parts took 27 s and 3 GB (child CPU time, not wall)."""
    import resource
    import subprocess
    import sys

    from safetensors.torch import save_file

    save_file({".".join(["m" * 999] * 1000): torch.ones(1)}, str(tmp_path / "long.safetensors"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-m", "modinspect", "tree", str(tmp_path / "long.safetensors"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (
        out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    ), out.stderr
    assert "that all their names would add up to more than 67,108,864 characters" in out.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 4.0, (
        cpu
    )  # about 0.4 s: the interpreter, the header, 64 MB of names built before the refusal
