"""PEFT adapter directories, written by peft's save_pretrained: read as a SOURCE, loaded into a PeftModel."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from conftest import invoke
from modinspect import open_source
from modinspect.sources.layout_hints import PEFT_SAVED

if TYPE_CHECKING:
    from peft import PeftModel

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

BUILD = textwrap.dedent(
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(rank_pattern=None):
        torch.manual_seed(1)
        config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                            eos_token_id=0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                          rank_pattern=rank_pattern or {}, init_lora_weights=False)
        return get_peft_model(GPT2LMHeadModel(config), lora)
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "peft_models.py").write_text(BUILD)
    return tmp_path


def _build(project: Path, **kwargs: Any) -> PeftModel:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"peft_models_{id(project)}", project / "peft_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(**kwargs)


def test_adapter_dir_is_a_source_with_rank_and_targets(project: Path) -> None:
    model = _build(project, rank_pattern={"attn.c_proj": 2})
    model.save_pretrained(str(project / "adapter"))  # peft annotates str
    with open_source(str(project / "adapter")) as src:
        assert src.format == "peft-safetensors"
        assert src.metadata["peft_type"] == "LORA"
        assert src.metadata["r"] == "4" and src.metadata["lora_alpha"] == "8"
        assert src.metadata["target_modules"] == "c_attn, c_proj"
        assert src.metadata["base_model"] == "GPT2LMHeadModel"
        # c_attn (2 layers) and mlp.c_proj (2) at rank 4, attn.c_proj (2) at the pattern's rank 2
        assert src.notes == [
            "PEFT LORA adapter for GPT2LMHeadModel: rank 4, alpha 8, target modules c_attn, c_proj",
            "saved ranks: 2 (2 modules), 4 (4 modules)",
        ]
        ours = {n: p for n, p in model.named_parameters() if "lora_" in n}
        assert len(src.tensors) == len(ours) == 12
        for name, p in ours.items():
            assert torch.equal(src.read_tensor(name.replace(".default", "")), p.detach())
    result = invoke("tree", str(project / "adapter"), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["format"] == "peft-safetensors" and doc["totals"]["params"] == sum(
        p.numel() for p in ours.values()
    )


def test_load_into_a_peft_model_hints_the_rename_that_works(project: Path) -> None:
    saved = _build(project)
    saved.save_pretrained(str(project / "adapter"))
    target = f"{project / 'peft_models.py'}:build"
    dry = invoke("load", target, str(project / "adapter"), "--dry-run", "--json")
    assert dry.exit_code == 0
    plan = json.loads(dry.stdout)
    assert plan["loaded"] == []
    repl = r".\1.default\2"
    assert plan["hints"][0] == (
        "12 checkpoint keys are a PEFT adapter saved without its adapter name: they match the model once 'default' "
        f"is inserted (lora_A.weight -> lora_A.default.weight): pass --rename '{PEFT_SAVED}={repl}'"
    )
    out = project / "merged.safetensors"
    result = invoke(
        "load",
        target,
        str(project / "adapter"),
        "--rename",
        f"{PEFT_SAVED}={repl}",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    from safetensors.torch import load_file

    written = load_file(str(out))
    lora = {n: p for n, p in saved.named_parameters() if "lora_" in n}
    assert len(lora) == 12
    for name, p in lora.items():
        assert torch.equal(written[name], p.detach())


def test_adapter_dir_errors(tmp_path: Path) -> None:
    from modinspect.errors import UnknownFormatError

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    with pytest.raises(UnknownFormatError) as info:
        open_source(str(folder))
    assert (
        str(info.value)
        == f"{folder} has adapter_config.json but no adapter_model.safetensors or adapter_model.bin"
    )
    (folder / "adapter_config.json").write_text('{"peft_type": ')
    result = invoke("tree", str(folder))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {folder / 'adapter_config.json'} is not a readable JSON adapter config (JSONDecodeError)\n"
    )
