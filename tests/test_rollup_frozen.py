"""Issue 26, part 4: `diff` rolls up per module (changed, unchanged, only in A/B) and `stats` lists frozen
parameters. Checked against torch: a backbone frozen, one real training step, every tensor compared with
torch.equal."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import invoke
from modinspect.names import rollup_key


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(3, 4, 3),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3),
                nn.BatchNorm2d(4),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            ),
            classifier=nn.Linear(4, 3),
        )
    )


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """before.pth and after.pth around one SGD step with the backbone (`features`) frozen, in eval mode."""
    root = tmp_path_factory.mktemp("freeze")
    model = _net().eval()  # eval: the frozen BatchNorms' running stats stay too
    for p in model.get_submodule("features").parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(before, root / "before.pth")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 12, 12)).pow(2).sum().backward()
    opt.step()
    after = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(after, root / "after.pth")
    return root, before, after


def test_diff_rolls_up_unchanged_and_changed_modules_as_torch_says(
    trained: tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    root, before, after = trained
    truth: dict[str, bool] = {}
    for name in before:
        key = rollup_key(name)
        truth[key] = truth.get(key, False) or not torch.equal(before[name], after[name])
    doc = json.loads(invoke("diff", "before.pth", "after.pth", "--json", cwd=root).stdout)
    got = {m["module"]: m["status"] for m in doc["module_status"]}
    assert got == {k: "changed" if moved else "unchanged" for k, moved in truth.items()}
    assert got == {
        "features.0": "unchanged",
        "features.1": "unchanged",
        "features.3": "unchanged",
        "features.5": "unchanged",
        "features.6": "unchanged",
        "classifier": "changed",
    }
    sizes = {m["module"]: m["tensors"] for m in doc["module_status"]}
    assert sizes == {k: sum(rollup_key(n) == k for n in before) for k in truth}
    text = invoke("diff", "before.pth", "after.pth", cwd=root).stdout
    assert "By module: 1 changed, 5 unchanged, 0 only in A, 0 only in B\n" in text
    assert "\n  classifier: 2 of 2 tensors changed, max |Δ| " in text
    assert "\n  unchanged: features.{0-1,3,5-6}\n" in text


def test_diff_names_modules_on_one_side_only(tmp_path: Path) -> None:
    a = {
        "features.0.weight": torch.ones(2),
        "features.1.weight": torch.ones(2),
        "old.weight": torch.ones(1),
        "mixed.a": torch.ones(1),
    }
    b = {
        "features.0.weight": torch.ones(2),
        "features.1.weight": torch.zeros(2),
        "new.bias": torch.ones(1),
        "mixed.a": torch.ones(1),
        "mixed.b": torch.ones(1),
    }
    torch.save(a, tmp_path / "a.pth")
    torch.save(b, tmp_path / "b.pth")
    doc = json.loads(invoke("diff", "a.pth", "b.pth", "--json", cwd=tmp_path).stdout)
    assert [(m["module"], m["status"], m["tensors"]) for m in doc["module_status"]] == [
        ("features.0", "unchanged", 1),
        ("features.1", "changed", 1),
        ("mixed", "changed", 2),
        ("old", "only_in_a", 1),
        ("new", "only_in_b", 1),
    ]
    text = invoke("diff", "a.pth", "b.pth", cwd=tmp_path).stdout
    assert "By module: 2 changed, 1 unchanged, 1 only in A, 1 only in B\n" in text
    assert "\n  mixed: tensors differ in shape or are on one side only\n" in text
    assert "\n  unchanged: features.0\n  only in A: old\n  only in B: new\n" in text


FROZEN_ENTRY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16)))
    model.add_module("head", nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)))
    model.features.requires_grad_(False)   # the backbone
    model.head[0].requires_grad_(False)    # one layer of the head
    model.head[2].bias.requires_grad_(False)  # and one tensor: head.2 is partly frozen, not fully
    return model
"""


def _brute_force(model: nn.Module) -> tuple[int, int, int, list[str]]:
    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]
    fully = [
        name
        for name, m in model.named_modules()
        if list(m.parameters()) and not any(p.requires_grad for p in m.parameters())
    ]
    outer = [
        n
        for n in fully
        if not any(n.startswith(f + ".") or (f == "" and n) for f in fully if f != n)
    ]
    return sum(p.numel() for p in frozen), sum(p.numel() for p in params), len(frozen), outer


def test_stats_lists_frozen_parameters_as_torch_counts_them(tmp_path: Path) -> None:
    (tmp_path / "frozen.py").write_text(FROZEN_ENTRY, encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(FROZEN_ENTRY, namespace)  # the test's own model, built as the CLI builds it
    model = namespace["build"]()
    params, total, tensors, outer = _brute_force(model)
    assert (params, tensors, outer) == (
        8 * 16 + 16 + 16 * 16 + 16 + 16 + 16 + 16 * 16 + 16 + 4,
        9,
        ["features", "head.0"],
    )
    doc = json.loads(invoke("stats", "frozen.py:build", "-s", "2,8", "--json", cwd=tmp_path).stdout)
    assert doc["frozen"] == {"params": params, "total": total, "tensors": tensors, "modules": outer}
    text = invoke("stats", "frozen.py:build", "-s", "2,8", cwd=tmp_path).stdout
    assert text.splitlines()[2] == (
        f"parameters: {total:,}, {params:,} frozen ({100 * params / total:.1f}%) in "
        f"{tensors} tensor(s); fully frozen: features, head.0"
    )


def test_stats_says_when_every_parameter_trains(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(3, 2)\n", encoding="utf-8"
    )
    doc = json.loads(invoke("stats", "m.py:build", "-s", "2,3", "--json", cwd=tmp_path).stdout)
    assert doc["frozen"] == {"params": 0, "total": 3 * 2 + 2, "tensors": 0, "modules": []}
    assert (
        invoke("stats", "m.py:build", "-s", "2,3", cwd=tmp_path).stdout.splitlines()[2]
        == "parameters: 8, all trainable"
    )


def test_a_fully_frozen_model_is_named_as_the_model(tmp_path: Path) -> None:
    from modinspect.run.stats import frozen_params

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).requires_grad_(False)
    assert frozen_params(model).modules == ("",)
    assert frozen_params(model).params == frozen_params(model).total == 12
