"""Sharded checkpoints: a `*.index.json` with a weight_map, or a Hugging Face model directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from modinspect.errors import CorruptFileError
from modinspect.sources.base import Source, TensorInfo

if TYPE_CHECKING:
    import torch

    from modinspect.sources.options import FileOpener, OpenOptions


def _load_index(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (
        OSError,
        ValueError,
        RecursionError,
    ) as exc:  # ValueError: bad UTF-8, bad JSON, huge integers
        raise CorruptFileError(
            f"{path} is not a readable JSON index ({type(exc).__name__})"
        ) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptFileError(f"{path} has no weight_map of tensor names to shard files")
    return weight_map


def _shard_path(index: Path, shard: str) -> Path:
    folder = index.parent.resolve()
    candidate = Path(shard)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise CorruptFileError(
            f"{index} names shard {shard!r} outside its directory; refusing to follow it"
        )
    if "\0" in shard:
        raise CorruptFileError(f"{index} names shard {shard!r}, which is not a file name")
    try:
        resolved = (folder / candidate).resolve()
        if not resolved.is_relative_to(folder):
            raise CorruptFileError(
                f"{index} names shard {shard!r}, which resolves outside its directory"
            )
        if not resolved.is_file():
            raise CorruptFileError(f"{index} names shard {shard!r}, which is missing")
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long for the file system
        raise CorruptFileError(
            f"{index} names shard {shard!r}, which cannot be followed ({exc})"
        ) from None
    return resolved


class ShardedSource(Source):
    """Every shard opened lazily through the single-file readers; tensors in index order of shards."""

    def __init__(
        self, index: Path, label: str, options: OpenOptions, open_file: FileOpener
    ) -> None:
        weight_map = _load_index(index)
        by_shard: dict[str, set[str]] = {}  # once, not one scan of the whole map per shard
        for name, shard in weight_map.items():
            by_shard.setdefault(shard, set()).add(name)
        shard_names = list(by_shard)
        self._shards: dict[str, Source] = {}
        self._owner: dict[str, Source] = {}
        tensors: list[TensorInfo] = []
        formats: set[str] = set()
        try:
            for shard in shard_names:
                path = _shard_path(index, shard)
                prefix = f"{shard}/{path}:"  # the storage keys this index gives a safetensors shard's tensors
                src = open_file(path, str(path), options, storage_prefix=prefix)
                self._shards[shard] = src
                if src.modules is not None or src.format == "torchscript":
                    raise CorruptFileError(
                        f"{index} names shard {shard!r}, which is not a state dict"
                    )
                tensors += self._add_shard(index, shard, src, weight_map, by_shard[shard])
                formats.add(src.format)
        except BaseException:
            self.close()  # the shards opened so far hold open zip files
            raise
        fmt = "sharded-" + ("safetensors" if formats == {"safetensors"} else "torch")
        super().__init__(label=label, format=fmt, tensors=tensors)
        for src in self._shards.values():
            self.shared_storage.update(src.shared_storage)
        if self.shared_storage:
            from modinspect.sources.safetensors import shared_storage_note

            self.notes.append(shared_storage_note(self.shared_storage))
        # A shard opened with --unsafe-pickle says so; its warning must reach the user.
        self.warnings.extend(w for src in self._shards.values() for w in src.warnings)
        self.would_call = list(
            dict.fromkeys(n for src in self._shards.values() for n in src.would_call)
        )

    def _add_shard(
        self, index: Path, shard: str, src: Source, weight_map: dict[str, str], expected: set[str]
    ) -> list[TensorInfo]:
        """The shard's tensors, once they agree with the index (`expected`: the names it places there).

        A safetensors shard was opened with the index's storage prefix: its descriptions are used as they are.
        """
        names = src.names()
        prefixed = src.format == "safetensors"
        present = set(names)
        missing = sorted(expected - present)
        if missing:
            raise CorruptFileError(
                f"{index} places {missing[0]!r} in {shard}, which does not hold it"
                + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else "")
            )
        tensors: list[TensorInfo] = []
        indexed_storages: set[str] | None = (
            None  # built only if a name the index does not list turns up
        )
        for t in src.tensors:
            owner_shard = weight_map.get(t.name)
            if owner_shard is None and t.storage is not None:
                if indexed_storages is None:
                    indexed_storages = {
                        o.storage
                        for o in src.tensors
                        if o.name in expected and o.storage is not None
                    }
                if t.storage in indexed_storages:
                    owner_shard = shard  # a save_model alias of an indexed tensor
            if owner_shard != shard:
                raise CorruptFileError(
                    f"{shard} holds {t.name!r}, which {index.name} "
                    + ("does not list" if owner_shard is None else f"places in {owner_shard}")
                )
            if not prefixed:
                storage = f"{shard}/{t.storage}" if t.storage else None
                t = TensorInfo(
                    t.name,
                    t.shape,
                    t.dtype,
                    t.nbytes,
                    t.kind,
                    storage,
                    t.requires_grad,
                    t.persistent,
                )
            tensors.append(t)
        self._owner.update(dict.fromkeys(names, src))
        return tensors

    def _read(self, name: str) -> torch.Tensor:
        return self._owner[name].read_tensor(name)

    def _chunks(self, name: str, chunk_elems: int) -> Iterator[torch.Tensor]:
        return self._owner[name].iter_chunks(name, chunk_elems)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        return self._owner[name].byte_range(name)

    def close(self) -> None:
        for src in self._shards.values():
            src.close()
