"""Hugging Face directories (config.json + weights) written by save_pretrained: the model built from the config."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from conftest import invoke, live
from modinspect import build_tree, open_source
from modinspect.sources.layout_hints import LEGACY_LAYOUT

if TYPE_CHECKING:
    from transformers import PreTrainedModel

transformers = pytest.importorskip("transformers")


def _gpt2(folder: Path) -> PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=50,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return model


def _bert(folder: Path) -> PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=60,
        max_position_embeddings=32,
    )
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(folder)
    return model


def test_gpt2_dir_has_real_classes_order_and_the_tied_head(tmp_path: Path) -> None:
    model = _gpt2(tmp_path / "gpt2")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gpt2" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert "lm_head.weight" not in stored  # what the tree must add back
    with open_source(str(tmp_path / "gpt2")) as src:
        assert src.format == "hf-safetensors"
        assert src.module is not None and live(src).lm_head.weight.device.type == "meta"
        report = build_tree(src)
        assert report.root.row.type == "GPT2LMHeadModel"
        assert [c.row.name for c in report.root.children] == [n for n, _ in model.named_children()]
        transformer = report.root.children[0]
        assert [c.row.name for c in transformer.children] == [
            f"transformer.{n}" for n, _ in model.get_submodule("transformer").named_children()
        ]
        assert [c.row.type for c in transformer.children] == [
            "Embedding",
            "Embedding",
            "Dropout",
            "ModuleList",
            "LayerNorm",
        ]
        assert report.tied == (("transformer.wte.weight", "lm_head.weight"),)
        assert (
            report.totals.params
            == model.num_parameters()
            == sum(p.numel() for p in model.parameters())
        )
        assert src.names() == list(model.state_dict())  # state_dict order, lm_head included
        assert torch.equal(
            src.read_tensor("lm_head.weight"),
            model.get_parameter("transformer.wte.weight").detach(),
        )
        assert torch.equal(
            torch.cat(list(src.iter_chunks("lm_head.weight", 7))),
            model.get_parameter("lm_head.weight").detach().reshape(-1),
        )
        assert src.notes[0].startswith(
            "model built from config.json on the meta device: GPT2LMHeadModel"
        )


def test_bert_dir_tree_and_diff_against_its_own_weights(tmp_path: Path) -> None:
    model = _bert(tmp_path / "bert")
    result = invoke("tree", str(tmp_path / "bert"), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["format"] == "hf-safetensors" and doc["module_known"] is True
    types = {m["name"]: m["type"] for m in doc["modules"]}
    assert (
        types[""] == "BertForMaskedLM"
        and types["bert.encoder.layer.0.attention.self.query"] == "Linear"
    )
    assert doc["totals"]["params"] == sum(p.numel() for p in model.parameters())
    same = invoke("diff", str(tmp_path / "bert"), str(tmp_path / "bert" / "model.safetensors"))
    assert same.exit_code == 0, same.stdout


def test_stats_and_load_take_the_dir_as_a_model(tmp_path: Path) -> None:
    model = _gpt2(tmp_path / "gpt2")
    with open_source(str(tmp_path / "gpt2"), model_weights="pretrained") as src:
        assert live(src).transformer.wte.weight.device.type == "cpu"
        for name, t in model.state_dict().items():
            assert torch.equal(live(src).state_dict()[name], t), name
    stats = invoke(
        "stats", str(tmp_path / "gpt2"), "--input-shape", "2,8", "--json", "--no-backward"
    )
    assert stats.exit_code == 0, stats.stderr
    doc = json.loads(stats.stdout)
    root = next(m for m in doc["modules"] if m["name"] == "")
    assert root["type"] == "GPT2LMHeadModel" and root["calls"] == 1
    out = tmp_path / "loaded.safetensors"
    loaded = invoke(
        "load",
        str(tmp_path / "gpt2"),
        str(tmp_path / "gpt2" / "model.safetensors"),
        "--strict",
        "--out",
        str(out),
    )
    assert loaded.exit_code == 0, loaded.stdout + loaded.stderr
    from safetensors.torch import load_file

    back = load_file(str(out))
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items() if k in back)


@pytest.mark.parametrize("kind", ["vit", "mixtral"])
def test_legacy_layout_is_named_on_load(tmp_path: Path, kind: str) -> None:
    """transformers 5 saves these in the legacy layout and converts them back in from_pretrained."""
    if kind == "vit":
        config = transformers.ViTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=8,
            patch_size=4,
        )
        model = transformers.ViTModel(config)
        legacy = "encoder.layer.0.attention.attention.key.bias"
    else:
        config = transformers.MixtralConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=32,
            vocab_size=50,
            num_local_experts=2,
        )
        model = transformers.MixtralForCausalLM(config)
        legacy = "model.layers.0.block_sparse_moe.experts.0.w1.weight"
    model.save_pretrained(tmp_path / kind)
    from safetensors import safe_open

    with safe_open(str(tmp_path / kind / "model.safetensors"), "pt") as f:
        assert legacy in set(f.keys())  # a real legacy-layout file
    result = invoke(
        "load",
        str(tmp_path / kind),
        str(tmp_path / kind / "model.safetensors"),
        "--dry-run",
        "--json",
    )
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["unexpected"] and plan["missing"]
    assert plan["hints"][0].endswith(LEGACY_LAYOUT)
    assert f"of {len(plan['unexpected'])} unexpected keys" in plan["hints"][0]
    text = invoke(
        "load", str(tmp_path / kind), str(tmp_path / kind / "model.safetensors"), "--dry-run"
    )
    assert LEGACY_LAYOUT in " ".join(text.stdout.split())
    # from_pretrained does convert it: the dir as a pretrained MODEL has the file's values under the new names.
    with open_source(str(tmp_path / kind), model_weights="pretrained") as src:
        if kind == "vit":
            got = live(src).layers[0].attention.k_proj.bias
            assert torch.equal(got, model.layers[0].attention.k_proj.bias)


def test_hint_needs_mostly_legacy_keys(tmp_path: Path) -> None:
    from modinspect.sources.layout_hints import legacy_layout_hint

    config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=4,
    )
    model = transformers.ViTModel(config)
    assert (
        legacy_layout_hint(
            model, ["head.weight", "head.bias", "encoder.layer.0.attention.attention.key.bias"]
        )
        is None
    )
    assert (
        legacy_layout_hint(torch.nn.Linear(2, 2), ["encoder.layer.0.attention.attention.key.bias"])
        is None
    )


def test_custom_code_configs_are_refused(tmp_path: Path) -> None:
    _gpt2(tmp_path / "remote")
    config = json.loads((tmp_path / "remote" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (tmp_path / "remote" / "config.json").write_text(json.dumps(config))
    (tmp_path / "remote" / "modeling_evil.py").write_text("raise SystemExit('ran remote code')\n")
    tree = invoke("tree", str(tmp_path / "remote"), "--json")
    assert tree.exit_code == 0
    doc = json.loads(tree.stdout)
    assert doc["format"] == "safetensors" and doc["module_known"] is False
    assert any("config.json not used" in n and "auto_map" in n for n in doc["notes"])
    stats = invoke("stats", str(tmp_path / "remote"), "--input-shape", "1,4")
    assert stats.exit_code == 2
    assert stats.stderr == (
        f"error: {tmp_path / 'remote'}/config.json maps its classes to code in the directory "
        "(auto_map); modinspect does not run a checkpoint's code (trust_remote_code): pass the "
        "model as an entry point, file.py:NAME\n"
    )


def test_without_transformers_a_note_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpt2(tmp_path / "gpt2")
    monkeypatch.setattr("modinspect.sources.hf_dir.has_transformers", lambda: False)
    with open_source(str(tmp_path / "gpt2")) as src:
        assert src.format == "safetensors" and src.modules is None
        assert src.notes == [
            "config.json found: install transformers (pip install 'modinspect[hf]') to see the "
            "model's classes, module order and tied weights"
        ]
    result = invoke("stats", str(tmp_path / "gpt2"), "--input-shape", "1,4")
    assert (
        result.exit_code == 2
        and "needs transformers (pip install 'modinspect[hf]')" in result.stderr
    )


class _BrokenTransformers(types.ModuleType):
    """transformers as a broken install imports: every name it is asked for raises."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("transformers 9.0 needs torch>=9.0 (found 2.x)\nsecond line")


def test_transformers_that_fails_to_import_falls_back_to_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _gpt2(tmp_path / "gpt2")
    monkeypatch.setitem(sys.modules, "transformers", _BrokenTransformers("transformers"))
    with pytest.raises(RuntimeError):
        import transformers as broken

        broken.AutoConfig  # noqa: B018
    result = invoke("tree", str(tmp_path / "gpt2"), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "safetensors" and doc["module_known"] is False
    assert doc["notes"] == [
        "config.json not used: transformers is installed but fails to import (RuntimeError: "
        "transformers 9.0 needs torch>=9.0 (found 2.x)); showing the weights alone"
    ]
    # counted from the file: the tied head is stored once
    assert doc["totals"]["params"] == sum(p.numel() for p in model.parameters())
    stats = invoke("stats", str(tmp_path / "gpt2"), "--input-shape", "1,4")
    assert stats.exit_code == 2
    assert stats.stderr == (
        f"error: {tmp_path / 'gpt2'} is a Hugging Face directory: building its model needs "
        "transformers, which fails to import (RuntimeError: transformers 9.0 needs torch>=9.0 "
        "(found 2.x))\n"
    )


def test_unknown_model_type_falls_back_to_the_weights(tmp_path: Path) -> None:
    _gpt2(tmp_path / "odd")
    config = json.loads((tmp_path / "odd" / "config.json").read_text())
    config["model_type"] = "not_a_model_type"
    (tmp_path / "odd" / "config.json").write_text(json.dumps(config))
    with open_source(str(tmp_path / "odd")) as src:
        assert src.format == "safetensors" and src.modules is None
        assert len(src.notes) == 1 and src.notes[0].startswith(
            "config.json not used: config.json is not a config this transformers builds"
        )
    result = invoke("stats", str(tmp_path / "odd"), "--input-shape", "1,4")
    assert result.exit_code == 2 and "is not a config this transformers builds" in result.stderr


def _legacy_layout_model(kind: str) -> PreTrainedModel:
    """A small random model of an architecture transformers saves in its legacy key layout."""
    torch.manual_seed(0)
    if kind == "vit":
        return transformers.ViTForImageClassification(
            transformers.ViTConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=32,
                patch_size=8,
                num_labels=3,
            )
        )
    if kind == "mixtral":
        return transformers.MixtralForCausalLM(
            transformers.MixtralConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=32,
                vocab_size=100,
                num_local_experts=4,
                num_experts_per_tok=2,
                max_position_embeddings=64,
            )
        )
    return transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=100,
            max_position_embeddings=64,
        )
    )


def _torch_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(parameters, persistent and non-persistent buffer elements) as torch counts them, each storage once."""
    params = sum(p.numel() for p in model.parameters())
    buffers = dict(model.named_buffers())
    persistent = sum(t.numel() for n, t in model.state_dict().items() if n in buffers)
    return params, persistent, sum(b.numel() for b in buffers.values()) - persistent


@pytest.mark.parametrize("kind", ["vit", "mixtral", "neox"])
def test_legacy_layout_dirs_count_what_torch_counts(tmp_path: Path, kind: str) -> None:
    model = _legacy_layout_model(kind).eval()
    model.save_pretrained(tmp_path / kind)
    from safetensors import safe_open

    with safe_open(str(tmp_path / kind / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert stored - set(
        model.state_dict()
    )  # transformers wrote the legacy layout: the case at hand
    params, persistent, _ = _torch_counts(model)
    result = invoke("tree", str(tmp_path / kind), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["totals"]["params"] == params
    assert doc["totals"]["persistent_buffers"] == persistent
    with open_source(str(tmp_path / kind)) as src:
        assert not any("not in the weights" in n or "not in the model" in n for n in src.notes), (
            src.notes
        )
        own = dict(model.named_parameters())
        for t in src.tensors:  # every tensor under the model's name holds the model's values
            if t.name in own:
                assert torch.equal(src.read_tensor(t.name), own[t.name].detach()), t.name
        if kind == "vit":  # renamed: shown under the model's names
            assert "vit.layers.0.attention.k_proj.bias" in src.names()
            assert "vit.encoder.layer.0.attention.attention.key.bias" not in src.names()
            assert src.notes[1].startswith(
                "32 stored tensors shown under the names from_pretrained loads them as"
            )
        elif kind == "mixtral":  # merged on load: the stored pieces, counted from the file
            gate_up = model.get_parameter("model.layers.0.mlp.experts.gate_up_proj")
            w1 = src.read_tensor("model.layers.0.block_sparse_moe.experts.1.w1.weight")
            assert torch.equal(w1, gate_up[1, :32].detach())
            assert (
                src.info("model.layers.0.block_sparse_moe.experts.1.w1.weight").kind == "parameter"
            )
            assert "model.layers.0.mlp.experts.gate_up_proj" not in src.names()
            assert any(
                n.startswith(
                    "24 stored tensors are pieces transformers converts into 4 model tensors"
                )
                for n in src.notes
            ), src.notes
        else:  # GPT-NeoX's head is stored as embed_out
            assert "lm_head.weight" in src.names() and "embed_out.weight" not in src.names()


def test_stored_tensors_the_model_does_not_name_are_counted_from_the_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = _gpt2(tmp_path / "gpt2")
    path = tmp_path / "gpt2" / "model.safetensors"
    weights = load_file(str(path))
    weights["stray.weight"] = torch.ones(3, 3)
    save_file(weights, str(path), metadata={"format": "pt"})
    result = invoke("tree", str(tmp_path / "gpt2"), "--json")
    doc = json.loads(result.stdout)
    assert doc["totals"]["params"] == sum(p.numel() for p in model.parameters()) + 9
    assert (
        "1 stored tensors are not in the model (e.g. stray.weight): 1 counted from the file"
        in doc["notes"]
    )


@pytest.mark.parametrize("kind", ["mixtral", "neox"])
def test_non_persistent_buffers_come_from_the_meta_model(tmp_path: Path, kind: str) -> None:
    from modinspect.errors import UsageError

    model = _legacy_layout_model(kind).eval()
    model.save_pretrained(tmp_path / kind)
    _, persistent, non_persistent = _torch_counts(model)
    not_saved = [n for n, _ in model.named_buffers() if n not in model.state_dict()]
    assert non_persistent and not_saved  # rotary inv_freq: the case at hand
    doc = json.loads(invoke("tree", str(tmp_path / kind), "--json").stdout)
    assert doc["totals"]["non_persistent_buffers"] == non_persistent
    assert doc["totals"]["buffers"] == persistent + non_persistent
    with open_source(str(tmp_path / kind)) as src:
        infos = {t.name: t for t in src.tensors}
        for name in not_saved:
            assert infos[name].kind == "buffer" and infos[name].persistent is False
            assert infos[name].shape == tuple(model.get_buffer(name).shape)
        assert not set(not_saved) & set(src.state_dict_names())
        with pytest.raises(
            UsageError,
            match=f"{not_saved[0]} is a non-persistent buffer: the directory does not store it",
        ):
            src.read_tensor(not_saved[0])
    same = invoke(
        "diff", str(tmp_path / kind), str(tmp_path / kind)
    )  # diff compares state dicts: no reads of them
    assert same.exit_code == 0, same.stdout + same.stderr


def test_max_layers_bounds_what_a_config_may_build(tmp_path: Path) -> None:
    from modinspect.errors import ModelTooLargeError
    from modinspect.sources.hf_layers import DEFAULT_MAX_LAYERS, count_layers

    model = _gpt2(tmp_path / "gpt2")  # 2 layers
    refused = invoke("tree", str(tmp_path / "gpt2"), "--max-layers", "1")
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {tmp_path / 'gpt2'}/config.json asks for 2 layers (n_layer: 2), more than "
        "--max-layers allows (1); building them could take minutes: pass --max-layers 2 to "
        "build it anyway\n"
    )
    for command in (
        ["stats", str(tmp_path / "gpt2"), "--input-shape", "1,4"],
        ["load", str(tmp_path / "gpt2"), str(tmp_path / "gpt2" / "model.safetensors"), "--dry-run"],
        ["diff", str(tmp_path / "gpt2"), str(tmp_path / "gpt2" / "model.safetensors")],
    ):
        result = invoke(*command, "--max-layers", "1")
        assert result.exit_code == 2 and "asks for 2 layers (n_layer: 2)" in result.stderr, command
    built = invoke("tree", str(tmp_path / "gpt2"), "--max-layers", "2", "--json")
    assert built.exit_code == 0
    assert json.loads(built.stdout)["totals"]["params"] == sum(
        p.numel() for p in model.parameters()
    )
    with pytest.raises(ModelTooLargeError):
        open_source(str(tmp_path / "gpt2"), max_layers=1)
    # encoder and decoder, nested configs: every stack counts
    bart = transformers.BartConfig(encoder_layers=3, decoder_layers=4, d_model=8).to_dict()
    assert count_layers(bart) == (7, "decoder_layers", 4)
    llava = {"text_config": {"num_hidden_layers": 40}, "vision_config": {"num_hidden_layers": 24}}
    assert count_layers(llava) == (64, "text_config.num_hidden_layers", 40)
    hostile = {
        "a.b\x1b[2J": [{"n_layer": 10**30}],
        "n_layers": True,
        "num_layers": "9",
    }  # a bool, a string: no count
    assert count_layers(hostile) == (10**30, "….0.n_layer", 10**30)
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", **hostile}))
    absurd = invoke("tree", str(tmp_path / "gpt2"))
    assert absurd.exit_code == 2
    assert absurd.stderr == (
        f"error: {tmp_path / 'gpt2'}/config.json asks for more than 10^9 layers (….0.n_layer: "
        "10000000…(31 digits)); no model has that many\n"
    )
    assert DEFAULT_MAX_LAYERS == 512


@pytest.mark.parametrize("mapping", ["transformers", "prefix only"])
def test_base_model_weights_match_a_head_model_through_its_prefix(
    tmp_path: Path, mapping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BertModel's weights (no `bert.` prefix) in a BertForMaskedLM directory, as from_pretrained loads them."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=60,
        max_position_embeddings=32,
    )
    base = transformers.BertModel(config, add_pooling_layer=False).eval()
    base.save_pretrained(tmp_path / "bert")
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path / "bert")
    if mapping == "prefix only":  # a transformers without (or with a moved) conversion mapping
        import transformers.conversion_mapping as conversion

        def moved(*_args: object, **_kwargs: object) -> None:
            raise AttributeError("moved")

        monkeypatch.setattr(conversion, "get_model_conversion_mapping", moved)
    with open_source(str(tmp_path / "bert")) as src:
        assert src.module is not None and type(src.module).__name__ == "BertForMaskedLM"
        names = set(src.names())
        assert {f"bert.{n}" for n in base.state_dict()} <= names
        assert not names & set(base.state_dict())  # every stored name is shown under the model's
        assert torch.equal(
            src.read_tensor("bert.encoder.layer.1.output.dense.weight"),
            base.encoder.layer[1].output.dense.weight.detach(),
        )
        report = build_tree(src)
        assert report.totals.params == sum(
            p.numel() for p in base.parameters()
        )  # the MLM head is not stored
        assert any(
            n.startswith(
                f"{len(base.state_dict())} stored tensors shown under the names from_pretrained"
            )
            for n in src.notes
        ), src.notes
        assert any("model tensors are not in the weights (e.g. cls." in n for n in src.notes), (
            src.notes
        )
