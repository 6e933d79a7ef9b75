"""Signatures of opted-in targets read from their source, without importing or running anything.

`automodel llm validate` promises to run nothing. Allowlisted targets live in our code and the libraries we depend on,
so validation imports those to bind keys and check types. A target outside the allowlist (the user's own module or a
`file.py:fn` file target) is read with `ast` instead: parameter names and which have defaults, enough to report an
unknown or a missing key. When the source does not spell the callable out (re-exports, generated classes), the
signature is unknown and validation says so instead of guessing.
"""

from __future__ import annotations

import ast
import importlib.machinery
import inspect
import sys
from pathlib import Path
from typing import Any

_HAS_DEFAULT = "<default>"  # the value in a static signature stands for "has some default"


def static_signature(dotted: str = "", *, file_path: str = "", symbol: str = "") -> inspect.Signature | None:
    """The signature of `dotted` (`pkg.mod.Name[.method]`) or of `symbol` in `file_path`, or None if unknown."""
    if file_path:
        return _signature_in_file(Path(file_path), symbol.split("."))
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
        source = _module_source(parts[:n])
        if source is not None:
            return _signature_in_file(source, parts[n:])
    return None


def _module_source(parts: list[str]) -> Path | None:
    """The .py file of module `parts`, found on sys.path without importing any package on the way."""
    locations: list[str] | None = None
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            spec = loaded.__spec__
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, locations)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    if origin and origin.endswith(".py"):
        return Path(origin)
    return None


def _signature_in_file(path: Path, symbol: list[str]) -> inspect.Signature | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for i, name in enumerate(symbol):
        node = _find(body, name)
        if node is None:
            return None
        if isinstance(node, ast.ClassDef):
            body = node.body
        elif i != len(symbol) - 1:
            return None
    if isinstance(node, ast.ClassDef):
        return _class_signature(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        bound = len(symbol) > 1 and not _has_decorator(node, "staticmethod")  # `Class.create`: drop cls
        return _function_signature(node, drop_first=bound and _has_decorator(node, "classmethod"))
    return None


def _find(body: list[ast.stmt], name: str) -> ast.AST | None:
    found = None
    for stmt in body:  # the last definition wins, as at run time
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
            found = stmt
    return found


def _has_decorator(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, name: str) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Name) and target.id == name) or (
            isinstance(target, ast.Attribute) and target.attr == name
        ):
            return True
    return False


def _class_signature(node: ast.ClassDef) -> inspect.Signature | None:
    init = _find(node.body, "__init__")
    if isinstance(init, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _function_signature(init, drop_first=True)
    if _has_decorator(node, "dataclass"):
        params = []
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if "ClassVar" in ast.unparse(stmt.annotation):
                    continue
                default: Any = inspect.Parameter.empty if stmt.value is None else _HAS_DEFAULT
                params.append(
                    inspect.Parameter(stmt.target.id, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                )
        return _safe_signature(params)
    return None  # inherits its __init__ from somewhere we cannot see statically


def _function_signature(node: ast.FunctionDef | ast.AsyncFunctionDef, *, drop_first: bool) -> inspect.Signature | None:
    args = node.args
    P = inspect.Parameter
    positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    first_default = len(positional) - len(args.defaults)
    params = []
    for i, (arg, kind) in enumerate(positional):
        params.append(P(arg.arg, kind, default=_HAS_DEFAULT if i >= first_default else P.empty))
    if args.vararg is not None:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=P.empty if default is None else _HAS_DEFAULT))
    if args.kwarg is not None:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    if drop_first and params and params[0].kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
    return _safe_signature(params)


def _safe_signature(params: list[inspect.Parameter]) -> inspect.Signature | None:
    try:
        return inspect.Signature(params)
    except ValueError:  # e.g. a dataclass field without default after one with: not a valid call signature
        return None
