"""Nested state (dicts, lists, tuples of tensors and plain values) as typed JSON plus a flat name -> tensor map.

Nothing here unpickles. A checkpoint stores the *structure* and every non-tensor value of a state dict (optimizer
``param_groups``, step counters, an RNG's python state) as JSON, and its tensors in safetensors files. The JSON is
typed so a state reads back exactly as it was written: every container is an object with one tag (``{"dict": [[key,
value], ...]}``, ``{"list": [...]}``, ``{"tuple": [...]}``), a tensor is ``{"tensor": "<name>"}``, a non-finite float
is ``{"float": "inf"}``; ints, finite floats, strings, booleans and null are plain JSON. Any other type raises
:class:`CheckpointError` when the state is encoded, before a file is written.

Tensor names are the path of the tensor in the tree, ``/``-joined: ``optim/state/model.layers.0.weight/exp_avg``
(dict keys percent-encoded, list positions as ``[i]``), so the same state always gives the same names and a
reader can match a saved tensor with the tensor of a live model that receives it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from torch.distributed.tensor import DTensor

from automodel.components.checkpoint.config import CheckpointError

FORMAT = "automodel-state-tree"
VERSION = 1
_TAGS = ("dict", "list", "tuple", "tensor", "float")
_SUPPORTED = "tensors, ints, floats, strings, booleans, None, and lists, tuples and dicts (str or int keys) of these"
PathPart = str | int


def render(path: tuple[PathPart, ...]) -> str:
    """``optim.param_groups[0].lr``: a path as a person reads it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "the top level"


def tensor_name(path: tuple[PathPart, ...]) -> str:
    # quote(safe=""): "/" and "%" inside a parameter name never fake a path separator; "[" is quoted too, so a
    # string key "[0]" cannot collide with list position 0
    return "/".join(f"[{part}]" if isinstance(part, int) else quote(part, safe="") for part in path)


def encode(value: Any, what: str, *, allow_dtensor: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(typed JSON tree, {tensor name: tensor})`` for ``value``; raises CheckpointError on an unsupported type.

    ``what`` names the state in the error ("the optimizer state", "rng_state").
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(value, (), tensors, what, allow_dtensor)
    return tree, tensors


def _encode(value: Any, path: tuple[PathPart, ...], tensors: dict, what: str, allow_dtensor: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if not allow_dtensor and isinstance(value, DTensor):
            raise CheckpointError(f"cannot save {what}: {render(path)} is a DTensor; give a plain (local) tensor")
        name = tensor_name(path)
        tensors[name] = value
        return {"tensor": name}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum reads back as its int
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}  # 'inf', '-inf', 'nan'
    if isinstance(value, list | tuple):
        items = [_encode(v, (*path, i), tensors, what, allow_dtensor) for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if isinstance(value, Mapping):
        pairs = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise CheckpointError(
                    f"cannot save {what}: {render(path)} has a key {key!r} of type {type(key).__name__}; only str "
                    "and int keys can be written"
                )
            pairs.append([key, _encode(item, (*path, key), tensors, what, allow_dtensor)])
        return {"dict": pairs}
    raise CheckpointError(
        f"cannot save {what}: {render(path)} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint "
        f"holds only {_SUPPORTED} (no pickles), so convert it in the object's state_dict()"
    )


def decode(tree: Any, tensors: Mapping[str, torch.Tensor], source: str) -> Any:
    """The value ``encode`` turned into ``tree``, with tensor references taken from ``tensors``.

    ``tree`` comes from a file of unknown origin: anything malformed raises CheckpointError naming ``source``.
    """
    return _decode(tree, (), tensors, source)


def _decode(tree: Any, path: tuple[PathPart, ...], tensors: Mapping, source: str) -> Any:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, dict) and len(tree) == 1:
        tag, body = next(iter(tree.items()))
        if tag == "tensor" and isinstance(body, str):
            if body not in tensors:
                raise CheckpointError(f"{source} refers to tensor {body!r}, which is not in the checkpoint's tensors")
            return tensors[body]
        if tag == "float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag in ("list", "tuple") and isinstance(body, list):
            items = [_decode(v, (*path, i), tensors, source) for i, v in enumerate(body)]
            return tuple(items) if tag == "tuple" else items
        if tag == "dict" and isinstance(body, list):
            out = {}
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str | int)):
                    break
                key = pair[0]
                out[key] = _decode(pair[1], (*path, key), tensors, source)
            else:
                return out
    raise CheckpointError(
        f"{source} is malformed at {render(path)} (expected one of the tags {list(_TAGS)} or a plain JSON value); "
        "the checkpoint is damaged or was not written by automodel"
    )


def tensor_refs(tree: Any) -> Iterator[str]:
    """The tensor names ``tree`` refers to (on a tree ``decode`` accepts)."""
    if isinstance(tree, dict) and len(tree) == 1:
        tag, body = next(iter(tree.items()))
        if tag == "tensor":
            yield body
        elif tag in ("list", "tuple") and isinstance(body, list):
            for item in body:
                yield from tensor_refs(item)
        elif tag == "dict" and isinstance(body, list):
            for pair in body:
                if isinstance(pair, list) and len(pair) == 2:
                    yield from tensor_refs(pair[1])


def dumps(tree: Any) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "tree": tree}, allow_nan=False)


def loads(path: Path) -> Any:
    """The tree of a file written with :func:`dumps`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read '{path}' ({error}); the checkpoint is damaged") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "tree" not in document:
        raise CheckpointError(f"'{path}' is not a state file written by automodel (no format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"'{path}' has state format version {document.get('version')!r}; this automodel reads version "
            f"{VERSION}: load it with the automodel version that wrote it"
        )
    return document["tree"]


# --- small states in two files: <name>.json (+ <name>.safetensors when it holds tensors) ------------------------


def encode_small(value: Any, what: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Serialise a small state (LR scheduler, one rank's RNG) up front: ``(json text, cpu tensors)``."""
    tree, tensors = encode(value, what, allow_dtensor=False)
    # safetensors refuses tensors that share memory or are not contiguous: write independent copies
    return dumps(tree), {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def write_small(directory: Path, name: str, encoded: tuple[str, dict[str, torch.Tensor]], write_text) -> list[Path]:
    """Write what :func:`encode_small` returned as ``<name>.json`` (+ ``<name>.safetensors``); return the files."""
    from safetensors.torch import save_file

    text, tensors = encoded
    written = [directory / f"{name}.json"]
    write_text(written[0], text)
    if tensors:
        written.append(directory / f"{name}.safetensors")
        save_file(tensors, str(written[1]))
    return written


def read_small(directory: Path, name: str) -> Any:
    """The state written by :func:`write_small` (safetensors and JSON only: nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    tree = loads(json_path)
    tensors: dict[str, torch.Tensor] = {}
    if tensor_path.is_file():
        try:
            tensors = load_file(str(tensor_path))
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"cannot read '{tensor_path}' ({error}); the checkpoint is damaged") from None
    return decode(tree, tensors, f"'{json_path}'")
