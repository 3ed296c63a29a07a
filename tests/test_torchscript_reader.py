"""TorchScript archives: the real module tree with class names, parameters and buffers."""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import SAMPLES
from models import Tied, TwoLayer, WithBatchNorm
from modinspect.errors import CorruptFileError, UnsafePickleError, UsageError
from modinspect.run.source import open_source
from modinspect.sources import Source
from modinspect.sources.base import tied_groups


def script_and_save(model: torch.nn.Module, path: Path) -> Path:
    # torch deprecates TorchScript itself; building the fixture is not what is under test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.fixture
def bn_model() -> WithBatchNorm:
    torch.manual_seed(0)
    model = WithBatchNorm()
    model.train()
    model(torch.randn(2, 3, 6, 6))  # move the running stats off their defaults
    return model


class LogitsOf(torch.nn.Module):
    """GPT-2 returns a ModelOutput, which tracing cannot follow: trace its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def jit_view(path: Path) -> Source:
    """What torch.jit.load gives (it runs the archive's code): the reference the safe reader must match."""
    return open_source(str(path), unsafe_pickle=True)


def assert_same_as_jit_load(path: Path) -> None:
    with open_source(str(path)) as safe, jit_view(path) as jit:
        assert safe.format == jit.format == "torchscript"
        assert safe.module is None and safe.warnings == [] and safe.standins == []
        assert safe.modules is not None and jit.modules is not None
        assert [(m.name, m.type, m.training) for m in safe.modules] == [
            (m.name, m.type, m.training) for m in jit.modules
        ]
        assert [
            (t.name, t.shape, t.dtype, t.nbytes, t.kind, t.requires_grad, t.persistent)
            for t in safe.tensors
        ] == [
            (t.name, t.shape, t.dtype, t.nbytes, t.kind, t.requires_grad, t.persistent)
            for t in jit.tensors
        ]
        assert tied_groups(safe.tensors) == tied_groups(jit.tensors)
        for name in jit.names():
            assert torch.equal(safe.read_tensor(name), jit.read_tensor(name)), name


def test_scripted_model_opens_with_its_module_tree_without_running_it(
    tmp_path: Path, bn_model: WithBatchNorm
) -> None:
    path = script_and_save(bn_model, tmp_path / "scripted.pt")
    with open_source(str(path)) as src:
        assert src.format == "torchscript" and src.label == str(path)
        assert src.warnings == [] and src.module is None
        assert src.modules is not None
        assert [(m.name, m.type, m.training) for m in src.modules] == [
            ("", "WithBatchNorm", True),
            ("conv", "Conv2d", True),
            ("bn", "BatchNorm2d", True),
            ("fc", "Linear", True),
        ]
        kinds = {t.name: t.kind for t in src.tensors}
        assert kinds == {
            "conv.weight": "parameter",
            "conv.bias": "parameter",
            "bn.weight": "parameter",
            "bn.bias": "parameter",
            "bn.running_mean": "buffer",
            "bn.running_var": "buffer",
            "bn.num_batches_tracked": "buffer",
            "fc.weight": "parameter",
            "fc.bias": "parameter",
        }
        sd = bn_model.state_dict()
        assert sorted(src.names()) == sorted(sd)
        for name, t in sd.items():
            info = src.info(name)
            assert (info.shape, info.dtype, info.nbytes) == (
                tuple(t.shape),
                str(t.dtype).removeprefix("torch."),
                t.numel() * t.element_size(),
            ), name
            assert torch.equal(src.read_tensor(name), t), name
        assert src.info("bn.num_batches_tracked").dtype == "int64"
        assert src.read_tensor("bn.num_batches_tracked").item() == 1
        assert src.info("conv.weight").requires_grad is True
        assert src.info("bn.running_mean").requires_grad is None
    assert_same_as_jit_load(path)


@pytest.mark.parametrize("name", ["two_layer", "tied", "sample_cnn", "gpt2_traced", "bert_traced"])
def test_safe_reader_matches_torch_jit_load(tmp_path: Path, name: str) -> None:
    """Modules, class names, kinds, ties and values equal what torch.jit.load reports, on several models."""
    if name == "sample_cnn":
        assert_same_as_jit_load(SAMPLES / "small_cnn_scripted.pt")
        return
    if name in ("two_layer", "tied"):
        script_and_save(TwoLayer() if name == "two_layer" else Tied(), tmp_path / "m.pt")
    else:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        if name == "gpt2_traced":
            config = transformers.GPT2Config(
                n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, torchscript=True
            )
            model = LogitsOf(transformers.GPT2LMHeadModel(config)).eval()
        else:
            config = transformers.BertConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=37,
                vocab_size=50,
                max_position_embeddings=16,
                torchscript=True,
                return_dict=False,
            )
            model = transformers.BertModel(config).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.randint(0, 50, (1, 8)), strict=False)
            torch.jit.save(traced, str(tmp_path / "m.pt"))
    assert_same_as_jit_load(tmp_path / "m.pt")


def test_eval_mode_is_kept(tmp_path: Path, bn_model: WithBatchNorm) -> None:
    path = script_and_save(bn_model.eval(), tmp_path / "scripted.pt")
    with open_source(str(path)) as src:
        assert src.modules is not None
        assert all(m.training is False for m in src.modules)


def test_scripted_module_keeps_non_persistent_buffers_and_ties(tmp_path: Path) -> None:
    path = script_and_save(TwoLayer(), tmp_path / "two.pt")
    with open_source(str(path)) as src:
        assert src.modules is not None
        assert [m.type for m in src.modules] == ["TwoLayer", "Linear", "ReLU", "Linear"]
        assert {t.name for t in src.tensors if t.kind == "buffer"} == {"scale", "cache"}
    path = script_and_save(Tied(), tmp_path / "tied.pt")
    with open_source(str(path)) as src:
        assert src.info("head.weight").storage == src.info("embed.weight").storage


def test_traced_model_opens_too(tmp_path: Path, bn_model: WithBatchNorm) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(bn_model.eval(), torch.randn(1, 3, 6, 6))
        torch.jit.save(traced, str(tmp_path / "traced.pt"))
    with open_source(str(tmp_path / "traced.pt")) as src:
        assert src.format == "torchscript"
        assert src.modules is not None
        assert [m.type for m in src.modules] == ["WithBatchNorm", "Conv2d", "BatchNorm2d", "Linear"]


def test_weights_into_torchscript_source_needs_the_flag(
    tmp_path: Path, bn_model: WithBatchNorm
) -> None:
    path = script_and_save(WithBatchNorm(), tmp_path / "scripted.pt")
    torch.save(bn_model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UsageError) as info:
        open_source(str(path), weights=str(tmp_path / "w.pt"))
    assert str(info.value) == (
        f"--weights needs the live module of {path}, a TorchScript archive, which only torch.jit.load builds, and "
        "that runs the archive's code; pass --unsafe-pickle only if you trust the file"
    )
    with open_source(str(path), weights=str(tmp_path / "w.pt"), unsafe_pickle=True) as src:
        assert torch.equal(src.read_tensor("bn.running_var"), bn_model.get_buffer("bn.running_var"))
        assert torch.equal(src.read_tensor("conv.weight"), bn_model.conv.weight.detach())


def test_damaged_torchscript_archive(tmp_path: Path, bn_model: WithBatchNorm) -> None:
    path = script_and_save(bn_model, tmp_path / "scripted.pt")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(damaged, "w") as zf:
        for name, data in members.items():
            if "/code/" not in name:  # drop the compiled code
                zf.writestr(name, data)
    with pytest.raises(
        CorruptFileError, match=f"^{damaged} is not a loadable TorchScript archive: "
    ):
        open_source(str(damaged))


def test_torchscript_archive_with_foreign_global_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
        zf.writestr("archive/constants.pkl", b"\x80\x02).")
        zf.writestr("archive/code/__torch__/x.py", "")
    with pytest.raises(UnsafePickleError, match=r"'posix\.system'"):
        open_source(str(tmp_path / "evil.pt"))


class RaisesWithText(torch.nn.Module):
    """A module whose forward keeps a string in code/ (the message of its raise), to be rewritten."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < 0:
            raise RuntimeError("PLACEHOLDER")
        return self.fc(x) * self.scale


LINEAR_CODE = (
    "class Linear"  # torch mangles the file's name when another Linear was scripted before
)
# (text of the code/ file to rewrite, old text, new text): torch.jit.load reads each rewritten archive as before. The old line parser
# was fooled by every one but the last: a fake class in a string, names split or spread as torch allows.
CODE_REWRITES = {
    "a triple-quoted string holding a fake class": (
        "PLACEHOLDER",
        '"PLACEHOLDER"',
        '"""\nclass {cls}(Module):\n  __parameters__ = []\n  __buffers__ = []\n"""',
    ),
    "a triple-single-quoted string holding a fake __buffers__": (
        "PLACEHOLDER",
        '"PLACEHOLDER"',
        "'''\n  __buffers__ = []\n'''",
    ),
    "adjacent literals, which torch concatenates": (
        LINEAR_CODE,
        '["weight", "bias", ]',
        '["wei" "ght", \'bias\']',
    ),
    "a list over three lines with a comment": (
        LINEAR_CODE,
        '["weight", "bias", ]',
        '["weight",\n    "bias", # "x" ]\n ]',
    ),
    "a backslash continuation": (
        LINEAR_CODE,
        '__parameters__ = ["weight", "bias", ]',
        '__parameters__ = \\\n ["weight", "bias", ]',
    ),
    "an octal escape": (LINEAR_CODE, '"weight"', '"w\\145ight"'),
    "a second statement for the same list": (
        LINEAR_CODE,
        "  __buffers__ = []\n",
        '  __buffers__ = []\n  __parameters__ = ["bias", ]\n',
    ),
    "escaped quotes and newlines in a one-line string": (
        "PLACEHOLDER",
        '"PLACEHOLDER"',
        '"\\"\\n  __buffers__ = [\\"x\\", ]\\n"',
    ),
}


def _rewrite_code(path: Path, member: str, old: str, new: str) -> str:
    """Rewrite the one code/ file of a TorchScript archive that holds `member`; returns its name under code/."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    done: list[str] = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            if name.endswith(".py") and member.encode() in data:
                text = data.decode()
                cls = re.search(r"^class (\w+)\(Module\):", text, re.M)
                assert cls is not None and old in text, (name, text)
                data = text.replace(old, new.format(cls=cls[1])).encode()
                done.append(name.partition("/code/")[2])
            zf.writestr(name, data)
    assert len(done) == 1
    return done[0]


@pytest.mark.parametrize("rewrite", sorted(CODE_REWRITES))
def test_code_text_is_lexed_as_torch_does(tmp_path: Path, rewrite: str) -> None:
    """Regression (code_string_hides_tensors): strings and line breaks in code/ no longer hide or rename tensors."""
    path = script_and_save(RaisesWithText(), tmp_path / "scripted.pt")
    _rewrite_code(path, *CODE_REWRITES[rewrite])
    with jit_view(path) as jit:  # the rewritten archive is one torch loads, with the same state
        assert [(t.name, t.kind) for t in jit.tensors] == [
            ("scale", "buffer"),
            ("fc.weight", "parameter"),
            ("fc.bias", "parameter"),
        ]
    assert_same_as_jit_load(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '["weight", "bias", ]',
            "foo()",
            "line 2 gives __parameters__ a value that is not a list of strings",
        ),
        (
            '"weight"',
            '"w\\xight"',
            "line 2 gives __parameters__ a name with the escape '\\\\x', which torch does not accept",
        ),
        (
            '"weight"',
            '"weight',
            "line 2 is not TorchScript this reader can parse (an unterminated string, unbalanced "
            "brackets or brackets nested more than 32 deep)",
        ),
        (
            "class Linear(Module):",
            "class Linear(Module):\n  pass\nclass Linear(Module):",
            "declares the class Linear twice",
        ),
    ],
)
def test_code_torch_would_refuse_is_one_clear_error(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = script_and_save(RaisesWithText(), tmp_path / "scripted.pt")
    member = _rewrite_code(path, LINEAR_CODE, old, new)
    with pytest.raises(CorruptFileError) as caught:
        open_source(str(path))
    assert str(caught.value) == f"{path}'s code/{member} {message}"
