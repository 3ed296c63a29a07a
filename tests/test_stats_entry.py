"""Entry points whose factory or forward imports a sibling module lazily, and `diff` of an entry point."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from conftest import invoke

MODELS = textwrap.dedent(
    """
    def build():
        from lit import LitNet  # a sibling, imported only when NAME runs (a LightningModule in lit.py)
        return LitNet()
    """
)
LIT = textwrap.dedent(
    """
    import torch
    from torch import nn

    class LitNet(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            import postproc  # imported on first use, while stats runs the model
            return postproc.scale(self.fc(x))
    """
)
POSTPROC = "def scale(x):\n    return x * 2\n"


def test_a_factory_and_a_forward_that_import_siblings_lazily(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    for name, text in (("models.py", MODELS), ("lit.py", LIT), ("postproc.py", POSTPROC)):
        (tmp_path / "proj" / name).write_text(text)
    before = list(sys.path)
    try:
        result = invoke(
            "stats", "proj/models.py:build", "--input-shape", "2,4", "--json", cwd=tmp_path
        )
        assert (result.exit_code, result.stderr) == (0, "")
        doc = json.loads(result.stdout)
        assert [m["name"] for m in doc["modules"]] == ["", "fc"]
        assert sys.path == before  # on the path while the model is built and used, not afterwards
    finally:
        for name in ("lit", "postproc"):
            sys.modules.pop(name, None)
