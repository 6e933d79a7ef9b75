"""Walk the whole allowlist and attack every entry: no listed callable, called through a config with arguments a
hostile YAML can express, may import or run code from a path the config gives, unpickle a file, start a process, or
write, create or delete anything at a path the config gives.

How: an "attacker" folder holds everything a hostile config could point at: a Python module that leaves a marker
when it runs, model/tokenizer/processor configs whose `auto_map` names that module (remote code), pickled weight and
adapter files whose unpickling leaves a marker, a GGUF-named file, and ordinary data. Every entry is built through
`instantiate` (the real config path, with its guards) once per string-accepting parameter and hostile value, plus
the loader keyword arguments that are known to load code. A Python audit hook records, during each call: code
compiled or executed from the attacker folder, any pickle global lookup, process creation, and any write, mkdir,
rename or delete inside the attacker folder. Errors from the calls are expected and ignored; events are not.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from automodel.components.config import ALLOWED_TARGETS, TARGET_ALIASES, ConfigNode, instantiate, resolve_target
from automodel.components.config import _allowlist as allowlist

# --- the audit hook -----------------------------------------------------------------------------------------------
_STATE: dict[str, Any] = {"active": False, "root": "", "events": []}
_PROCESS_EVENTS = {
    "os.system",
    "subprocess.Popen",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "ctypes.dlopen",
    "pty.spawn",
}
_PATH_CHANGE_EVENTS = {
    "os.mkdir",
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.symlink",
    "os.link",
    "os.chmod",
    "os.truncate",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under_root(path: Any) -> bool:
    try:
        text = os.fsdecode(path) if not isinstance(path, int) else ""
    except TypeError:
        return False
    if not text:
        return False
    return os.path.abspath(text).startswith(_STATE["root"])


def _hook(event: str, args: tuple) -> None:
    if not _STATE["active"]:
        return
    record = _STATE["events"].append
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and _under_root(path):
            record(("write", os.fsdecode(path)))
    elif event in _PATH_CHANGE_EVENTS:
        if any(_under_root(a) for a in args if isinstance(a, (str, bytes, os.PathLike))):
            record((event, str(args[0])))
    elif event == "compile":
        filename = args[1] if len(args) > 1 else None
        if isinstance(filename, (str, bytes)) and _under_root(filename):
            record(("compile", os.fsdecode(filename)))
    elif event == "exec":
        code = args[0] if args else None
        filename = getattr(code, "co_filename", None)
        # transformers copies remote code into its modules cache before running it
        if isinstance(filename, str) and (_under_root(filename) or "transformers_modules" in filename):
            record(("exec", filename))
    elif event == "import":
        module = args[0] if args else ""
        if isinstance(module, str) and (module.split(".")[0] in ("evil", "transformers_modules")):
            record(("import", module))
    elif event == "pickle.find_class":
        record(("unpickle", f"{args[0]}.{args[1]}"))
    elif event in _PROCESS_EVENTS:
        record(("process", event))


sys.addaudithook(_hook)  # cannot be removed; it does nothing unless a test activates it


def _audited(call: Callable[[], Any]) -> list[tuple[str, str]]:
    _STATE["events"] = []
    _STATE["active"] = True
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - the call is expected to fail; only its side effects matter
        if isinstance(error, KeyboardInterrupt):
            raise
    finally:
        _STATE["active"] = False
    return list(_STATE["events"])


# --- what a hostile config can point at ----------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates the marker file: the proof that a loader unpickled an attacker's file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def _build_attacker_folder(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    markers = root / "markers"
    markers.mkdir()
    evil = f"open({str(markers / 'code_ran')!r}, 'w').write('ran')\nclass EvilConfig: pass\nclass EvilModel: pass\n"
    (root / "evil.py").write_text(evil)
    tiny = TINY_LLAMA
    remote = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
        "AutoModelForImageTextToText": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
        "AutoProcessor": "evil.EvilProcessor",
        "AutoImageProcessor": "evil.EvilProcessor",
    }
    # remote-code model: every config names the attacker's module
    (root / "config.json").write_text(json.dumps({**tiny, "auto_map": remote}))
    (root / "tokenizer_config.json").write_text(json.dumps({"auto_map": remote, "tokenizer_class": "EvilTokenizer"}))
    (root / "preprocessor_config.json").write_text(json.dumps({"auto_map": remote, "processor_class": "EvilProcessor"}))
    (root / "processor_config.json").write_text(json.dumps({"auto_map": remote, "processor_class": "EvilProcessor"}))
    # pickled weights and adapter weights
    payload = pickle.dumps(_Payload(str(markers / "unpickled")))
    for name in ("pytorch_model.bin", "adapter_model.bin", "training_args.bin", "optimizer.pt", "data.pkl"):
        (root / name).write_bytes(payload)
    (root / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(root), "target_modules": ["q_proj"], "r": 2})
    )
    (root / "evil.gguf").write_bytes(b"GGUF" + payload)
    # a plausible model: a clean config, but only pickled weights
    plausible = root / "plausible_model"
    plausible.mkdir()
    (plausible / "config.json").write_text(json.dumps(tiny))
    (plausible / "pytorch_model.bin").write_bytes(payload)
    (plausible / "evil.py").write_text(evil)
    # ordinary data, so that builders get past their first checks
    rows = [
        {"context": "c", "question": "q?", "answers": {"text": ["a"], "answer_start": [0]}, "id": str(i)}
        for i in range(4)
    ]
    rows = [dict(r, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]) for r in rows]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "markers": markers, "plausible": plausible}


HOSTILE_LOADER_KWARGS: dict[str, Any] = {
    # keyword arguments of transformers' loaders that load code, pickles or write files
    "trust_remote_code": True,
    "weights_only": False,
    "use_safetensors": False,
    "code_revision": "main",
    "local_files_only": True,
    "use_kernels": True,
    "attn_implementation": "evil-org/evil-kernels",
    "kernel_config": {"kernel_mapping": {"RMSNorm": "evil-org/evil-kernels:rmsnorm"}},
}


def _hostile_paths(paths: dict[str, Path]) -> list[str]:
    root = paths["root"]
    return [
        str(root),
        str(root / "evil.py"),
        str(root / "pytorch_model.bin"),
        str(root / "evil.gguf"),
        str(root / "train.jsonl"),
        str(paths["plausible"]),
        str(root / "new_dir" / "out.txt"),
    ]


def _path_kwargs(paths: dict[str, Path]) -> dict[str, str]:
    # keyword arguments naming folders and files, passed to every `**kwargs` of a loader
    root = paths["root"]
    return {
        "cache_dir": str(root / "cache"),
        "offload_folder": str(root / "offload"),
        "gguf_file": "evil.gguf",
        "subfolder": ".",
        "output_dir": str(root / "out"),
        "save_directory": str(root / "saved"),
        "log_dir": str(root / "logs"),
    }


def _accepts_str(param: inspect.Parameter, hints: dict[str, Any]) -> bool:
    annotation = hints.get(param.name, param.annotation)
    if annotation in (inspect.Parameter.empty, Any, str, os.PathLike) or isinstance(annotation, str):
        return True
    args = typing.get_args(annotation)
    return any(a in (str, Any) or a is os.PathLike or getattr(a, "__origin__", None) is os.PathLike for a in args)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(60)} | {"<pad>": 60, "<s>": 61, "</s>": 62, "<unk>": 63}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", bos_token="<s>")


def _runtime(category: str, name: str) -> dict[str, Any]:
    """What the recipe supplies at build time for this kind of entry."""
    if category == allowlist.OPTIMIZER:
        return {
            "params": [("w", torch.nn.Parameter(torch.zeros(4, 4)))]
            if "automodel" in name
            else [torch.nn.Parameter(torch.zeros(4, 4))]
        }
    if category == allowlist.LR_SCHEDULER:
        return {
            "optimizer": torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1),
            **({"total_steps": 10} if "build_lr" in name else {}),
        }
    if category == allowlist.DATALOADER:
        return {"dataset": [{"input_ids": [1, 2]}] * 2}
    if category == allowlist.DATASET:
        return {"tokenizer": _tiny_tokenizer()} if "vlm" not in name else {}
    if category == allowlist.COLLATE:
        return {}
    return {}


def _calls(name: str, category: str, fn: Callable[..., Any], paths: dict[str, Path]) -> Iterator[tuple[dict, dict]]:
    """(config section without _target_, runtime kwargs) pairs to try for one entry."""
    runtime = _runtime(category, name)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    params = [] if signature is None else [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    hints = _hints(fn)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in runtime]
    required = [p for p in named if p.default is inspect.Parameter.empty]
    hostile = _hostile_paths(paths)
    base = {p.name: hostile[0] for p in required if _accepts_str(p, hints)}
    if category == allowlist.COLLATE:
        base = {}
        runtime = {}
    loader = category in (allowlist.MODEL, allowlist.MODEL_CONFIG, allowlist.TOKENIZER, allowlist.PROCESSOR)
    if loader and not params:  # e.g. AutoModelForCausalLM.from_config(**kwargs)
        base = {"config": hostile[0]}
    if loader and "pretrained_model_name_or_path" not in base and name.endswith("from_pretrained"):
        base["pretrained_model_name_or_path"] = hostile[0]
    yield base, runtime
    for param in named:  # every string-accepting parameter, set to every hostile path
        if _accepts_str(param, hints):
            for value in hostile:
                yield {**base, param.name: value}, runtime
    if loader or takes_kwargs:
        for source in (hostile[0], hostile[5]):
            first = "config" if name.endswith("from_config") else "pretrained_model_name_or_path"
            section = {**base, **({first: source} if first in base or loader else {})}
            for key, value in {**HOSTILE_LOADER_KWARGS, **_path_kwargs(paths)}.items():
                yield {**section, key: value}, runtime
            yield {**section, **_path_kwargs(paths)}, runtime
    if name.endswith("from_config"):  # tiny: a default-sized config would build billions of parameters
        remote = {"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
        yield {"config": {**TINY_LLAMA, "auto_map": remote}}, runtime
    if category == allowlist.COLLATE:
        yield {}, {}


@pytest.fixture(scope="module")
def attacker(tmp_path_factory) -> dict[str, Path]:
    paths = _build_attacker_folder(tmp_path_factory.mktemp("attacker") / "attack")
    _STATE["root"] = os.path.abspath(paths["root"]) + os.sep
    return paths


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    for name in ("AUTOMODEL_ALLOWED_TARGETS", "AUTOMODEL_ALLOW_FILE_TARGETS", "AUTOMODEL_TRUST_REMOTE_CODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOMODEL_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "automodel-audit-home"))


# --- the tests --------------------------------------------------------------------------------------------------
def test_every_entry_is_an_exact_public_callable_of_a_build_category():
    categories = {v for k, v in vars(allowlist).items() if k.isupper() and isinstance(v, str) and k != "_C"}
    for name, kind in ALLOWED_TARGETS.items():
        obj = resolve_target(name)
        assert callable(obj) and not isinstance(obj, types.ModuleType), name
        assert kind in categories, (name, kind)
        assert not any(part.startswith("__") for part in name.split(".")), name
    for alias, name in TARGET_ALIASES.items():
        assert name in ALLOWED_TARGETS, alias
        assert resolve_target(alias) == resolve_target(name), alias  # bound classmethods compare equal


def _entries() -> list[str]:
    return sorted(ALLOWED_TARGETS)


@pytest.mark.parametrize("name", _entries())
def test_no_entry_runs_code_unpickles_or_writes_at_a_path_from_the_config(name, attacker):
    fn = resolve_target(name)
    category = ALLOWED_TARGETS[name]
    calls = list(_calls(name, category, fn, attacker))
    assert calls, f"no hostile call generated for {name}"
    findings = []
    for section, runtime in calls:
        node = ConfigNode({"_target_": name, **section})
        for event in _audited(lambda node=node, runtime=runtime: instantiate(node, **runtime)):
            findings.append((section, event))
    markers = sorted(p.name for p in attacker["markers"].iterdir())
    assert not markers, f"{name}: attacker payloads ran: {markers}"
    assert not findings, f"{name}: {len(findings)} forbidden side effects, e.g. {findings[:3]}"


def test_the_audit_sees_what_it_looks_for(attacker, tmp_path):
    """The hook and the payloads work: the same attacks without the config guard are caught (a test that cannot
    fail would prove nothing)."""
    from transformers import AutoConfig

    root = attacker["root"]
    events = _audited(lambda: AutoConfig.from_pretrained(str(root), trust_remote_code=True))
    kinds = {kind for kind, _ in events}
    assert {"exec", "shutil.copyfile"} <= kinds, events  # the remote code was copied and run...
    assert ("write", str(attacker["markers"] / "code_ran")) in events  # ...and the payload's write was seen
    events = _audited(lambda: torch.load(root / "pytorch_model.bin", weights_only=False))
    assert any(kind == "unpickle" for kind, _ in events), events
    events = _audited(lambda: (root / "new_file").write_text("x"))
    assert ("write", str(root / "new_file")) in events
    for marker in attacker["markers"].iterdir():  # clean up what these control attacks left
        marker.unlink()
    (root / "new_file").unlink()
    import shutil

    shutil.rmtree(
        Path(os.environ.get("HF_MODULES_CACHE", Path.home() / ".cache/huggingface/modules")) / "transformers_modules",
        ignore_errors=True,
    )
