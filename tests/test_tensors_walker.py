"""The one walker over nested outputs and batches: each of its rules, and its callers' uses of them."""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections import OrderedDict, defaultdict
from typing import Any, NamedTuple

import pytest
import torch
from torch.utils._pytree import tree_leaves

from modinspect.run.inputs import to_device
from modinspect.tensors import MAX_DEPTH, iter_tensors, map_tensors


class Pair(NamedTuple):
    first: Any
    second: Any


@dataclasses.dataclass
class Out:
    logits: Any
    hidden: Any = None
    extra: Any = dataclasses.field(default=None, init=False)


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: Any
    b: Any


def ids(tensors: Any) -> list[int]:
    return [id(t) for t in tensors]


def nested(depth: int, leaf: Any) -> Any:
    """`leaf` inside `depth` one-element lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def test_iter_tensors_visits_every_container_in_order() -> None:
    t = [torch.full((1,), float(i)) for i in range(8)]
    out = Out(logits=t[1], hidden=(t[2], [t[3]]))
    out.extra = {"k": t[4]}
    obj = (t[0], out, {"a": Pair(t[5], "text"), "b": None, "c": 7}, [t[6], {t[7]}])
    # A set is not walked: its tensor t[7] is not found; strings, numbers and None are skipped.
    assert ids(iter_tensors(obj)) == ids(t[:7])


def test_a_tensor_alone_and_a_parameter_are_leaves() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    assert ids(iter_tensors(p)) == [id(p)]
    assert ids(iter_tensors([p, torch.nn.Linear(2, 2)])) == [id(p)]  # a module is not walked
    assert list(iter_tensors("not a container")) == []


def test_depth_limit_stops_deep_and_self_referencing_containers() -> None:
    t = torch.zeros(1)
    assert ids(iter_tensors(nested(MAX_DEPTH, t))) == [id(t)]
    assert list(iter_tensors(nested(MAX_DEPTH + 1, t))) == []
    assert ids(iter_tensors(nested(3, t), max_depth=3)) == [id(t)]
    assert list(iter_tensors(nested(4, t), max_depth=3)) == []
    loop: list[Any] = [t]
    loop.append(loop)
    assert ids(iter_tensors(loop)) == [id(t)] * MAX_DEPTH  # each level's t, then the limit
    deep = nested(MAX_DEPTH + 1, t)
    assert map_tensors(deep, lambda x: x + 1) is deep  # deeper than the limit: kept as it is


def test_dataclasses_are_walked_unless_asked_not_to() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    out = Out(logits=a, hidden=b)
    assert ids(iter_tensors(out)) == [id(a), id(b)]
    assert list(iter_tensors(out, into_dataclasses=False)) == []
    assert map_tensors(out, lambda x: x + 1, into_dataclasses=False) is out
    assert list(iter_tensors(Out)) == []  # a dataclass type is not an instance


def test_iter_tensors_finds_what_torch_pytree_finds_in_an_op_s_arguments() -> None:
    """The attribution tracer's rule (it used torch's pytree): an aten op's args and kwargs."""
    x, y, z = torch.zeros(2), torch.ones(2), torch.full((2,), 2.0)
    args = ((x, [y, z], 3, torch.float32, None), {"out": x, "dim": (0,)})
    expected = [leaf for leaf in tree_leaves(args) if isinstance(leaf, torch.Tensor)]
    assert ids(iter_tensors(args)) == ids(expected)


def test_model_output_is_walked_by_its_set_fields_and_rebuilt_as_itself() -> None:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    loss, logits = torch.tensor(1.5), torch.zeros(2, 3)
    out = CausalLMOutputWithPast(loss=loss, logits=logits)
    assert ids(iter_tensors(out)) == [id(loss), id(logits)]
    doubled = map_tensors(out, lambda t: t * 2)
    assert type(doubled) is CausalLMOutputWithPast and doubled is not out
    assert doubled.loss is not None and float(doubled.loss) == 3.0 and float(doubled["loss"]) == 3.0
    assert (
        doubled.logits is not None
        and doubled.logits.shape == (2, 3)
        and doubled.past_key_values is None
    )
    assert out.loss is not None and float(out.loss) == 1.5  # the original is untouched


def test_map_tensors_keeps_each_container_s_type() -> None:
    t = torch.ones(1)
    dd: defaultdict[str, Any] = defaultdict(list, {"x": t})
    obj = [
        Pair(t, "s"),
        OrderedDict(a=t, b=2),
        dd,
        Frozen(a=t, b=(t,)),
        (t, 1),
        {"k": [t]},
    ]
    out = map_tensors(obj, lambda x: x + 1)
    assert [type(o) for o in out] == [Pair, OrderedDict, defaultdict, Frozen, tuple, dict]
    assert out[0].second == "s" and float(out[0].first) == 2.0
    assert list(out[1]) == ["a", "b"] and out[1]["b"] == 2
    assert out[2].default_factory is list and float(out[2]["x"]) == 2.0
    assert float(out[3].a) == 2.0 and float(out[3].b[0]) == 2.0
    assert [float(x) for x in iter_tensors(out)] == [2.0] * 7
    assert float(t) == 1.0


def test_map_tensors_maps_init_false_fields_and_keeps_unchanged_containers() -> None:
    a = torch.zeros(1)
    out = Out(logits=a)
    out.extra = [a]
    moved = map_tensors(out, lambda x: x + 5)
    assert float(moved.logits) == 5.0 and float(moved.extra[0]) == 5.0 and moved.hidden is None
    untouched = {"x": [1, 2], "y": (a,)}
    same = map_tensors(untouched, lambda x: x)
    assert same is untouched and same["x"] is untouched["x"]


def test_plain_rebuilds_what_a_weights_only_load_reads_back() -> None:
    """watch saves a batch for `stats --input`: plain dicts, lists and tuples, on the CPU."""
    t = torch.ones(2)
    batch = OrderedDict(a=Pair(t, [t]), b=(t,), c=[])
    plain = map_tensors(batch, lambda x: x.detach().cpu(), plain=True)
    assert type(plain) is dict and type(plain["a"]) is tuple and type(plain["a"][1]) is list
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded.keys() == {"a", "b", "c"} and torch.equal(loaded["a"][1][0], t)
    kept = io.BytesIO()
    torch.save(map_tensors(batch, lambda x: x), kept)  # not plain: the OrderedDict of a named tuple
    kept.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Pair"):
        torch.load(kept, weights_only=True)


def test_to_device_moves_a_named_tuple_batch() -> None:
    """Before the one walker, a named tuple in a batch raised TypeError (it was rebuilt from a generator)."""
    x, y = torch.zeros(2), torch.ones(2)
    args, kwargs = to_device(((Pair(x, y),), {"mask": [y]}), "cpu", requires_grad=True)
    assert type(args[0]) is Pair and args[0].first.requires_grad and args[0].second.requires_grad
    assert kwargs["mask"][0].requires_grad and not y.requires_grad


OFFSETS = torch.ones(1, 4)  # a module-level tensor the model below reads inside a list


class CatOffsets(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fc(x), OFFSETS], dim=0)


def test_doctor_sees_a_global_tensor_passed_inside_a_list() -> None:
    """doctor's use check looked only at an op's top-level arguments: torch.cat([x, OFFSETS]) hid OFFSETS."""
    import modinspect

    report = modinspect.doctor(CatOffsets(), (torch.randn(2, 4),))
    found = [(f.id, f.where.attribute) for f in report.findings]
    assert found == [("global-tensor-in-forward", "OFFSETS")]
