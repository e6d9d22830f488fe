"""A researcher's own model or dataset: `model.kind` / `data.dataset` given as a function.

A reference is `package.module:function` (importable) or `path/to/file.py:function` (relative to
the config that names it). It is checked in two steps:

- when the config loads (`resolve`): the syntax, that the module or file exists, and, read from its
  source without importing it, that it defines the function with the positional parameters it is
  called with. Importing user code here would import Keras before `--backend` has chosen one, and
  make `validate` as slow as TensorFlow's start-up;
- before anything trains (`load`): the import itself and the signature, once the backend is set.

A file reference is stored in a run's params with an absolute path, so its config.yaml reproduces
the run from anywhere; what names the run is the function's name and a hash of its source file
(`fingerprint`), not the path: an edited file is a new run, a moved one is not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

REFERENCE = re.compile(r"(?P<module>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# What each key's function is called with, in order.
SIGNATURES = {"model.kind": ("input_shape", "num_classes", "norm", "params"),
              "data.dataset": ("params",)}
KEYS = tuple(SIGNATURES)


class CallableError(ValueError):
    """A reference that cannot be used; the message names the key and the file."""


def is_reference(value: Any) -> bool:
    """True for `module:function` / `file.py:function` (built-in names have no colon)."""
    return isinstance(value, str) and REFERENCE.fullmatch(value) is not None


def check_syntax(value: str) -> str:
    """The schema's check of a reference's spelling (no file is read)."""
    match = REFERENCE.fullmatch(value)
    module = match and match["module"]
    if not module or not (module.endswith(".py") or MODULE_NAME.fullmatch(module)):
        raise ValueError(f'expected "package.module:function" or "file.py:function", got {value!r}')
    return value


def function_name(value: str) -> str:
    return REFERENCE.fullmatch(value)["function"]


def _split(value: str) -> tuple[str, str]:
    match = REFERENCE.fullmatch(value)
    return match["module"], match["function"]


def resolve(key: str, value: str, base: Path) -> str:
    """The reference with a file path made absolute (relative to `base`, the config's folder), after
    checking that the function is defined with the parameters `key` calls it with."""
    module, function = _split(value)
    if module.endswith(".py"):
        path = (base / module).resolve()
        if not path.is_file():
            raise CallableError(f"{key}: {value}: no such file {path}")
    else:
        path = _module_file(key, value, module)
    _check_source(key, value, path, function)
    return f"{path}:{function}" if module.endswith(".py") else value


def _module_file(key: str, value: str, module: str) -> Path:
    """The source file of an importable module, found without importing it (its parent packages
    are imported, as Python does to find it)."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception as e:  # noqa: BLE001 - a parent package's __init__ may raise anything
        spec, why = None, f" ({one_line(e)})"
    else:
        why = ""
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise CallableError(f"{key}: {value}: cannot find module {module}{why}: not installed and "
                            f"not on PYTHONPATH; or name its file, e.g. models.py:{_split(value)[1]}")
    return Path(spec.origin)


def _check_source(key: str, value: str, path: Path, function: str) -> None:
    """The function is defined at the top level of `path` and takes the parameters of `key`."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as e:
        raise CallableError(f"{key}: {value}: {path}:{e.lineno}: syntax error: {e.msg}") from None
    except (OSError, ValueError) as e:
        raise CallableError(f"{key}: {value}: cannot read {path}: {e}") from None
    wanted = SIGNATURES[key]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            arguments = node.args
            positional = len(arguments.posonlyargs) + len(arguments.args)
            required = positional - len(arguments.defaults)
            if (positional < len(wanted) and arguments.vararg is None) or required > len(wanted) or any(
                    d is None for d in arguments.kw_defaults):
                raise CallableError(f"{key}: {value}: {path}:{node.lineno}: {function} must take "
                                    f"({', '.join(wanted)})")
            return
        if _binds(node, function):  # assigned or imported: its signature is checked on import
            return
    raise CallableError(f"{key}: {value}: {path} defines no function {function}")


def _binds(node: ast.stmt, name: str) -> bool:
    """Whether a top-level statement other than `def` binds `name`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names)
    if isinstance(node, ast.ClassDef):
        return node.name == name
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def source_file(value: str) -> Path:
    """The file a (resolved) reference's function is defined in."""
    module, _ = _split(value)
    if module.endswith(".py"):
        return Path(module)
    return _module_file("model.kind", value, module)


_HASHES: dict[tuple[str, int, int], str] = {}


def fingerprint(value: str) -> str:
    """`function@hash`: what names a run. The hash is of the source file's bytes, so any edit of
    that file (not only of the function) makes a new run: the function may call anything in it."""
    path = source_file(value)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{function_name(value)}@{_HASHES[key]}"


_LOADED: dict[tuple[str, str], Callable] = {}


def load(key: str, value: str) -> Callable:
    """Import a resolved reference's function and check that it can be called as `key` calls it;
    a CallableError naming the key and the function's file if not."""
    cached = (value, fingerprint(value))  # an edited file is imported again
    if cached in _LOADED:
        return _LOADED[cached]
    module, function = _split(value)
    try:
        if module.endswith(".py"):
            path = Path(module)
            # A name of its own per file, so that two users' models.py do not replace each other.
            name = f"bncompare_user_{path.stem}_{hashlib.sha256(module.encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[name] = loaded  # dataclasses and pickling look the module up by name
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module raised: say which and why, in one line
        sys.modules.pop(locals().get("name", ""), None)
        raise CallableError(f"{key}: {value}: importing it failed: {one_line(e)}") from None
    target = getattr(loaded, function, None)
    if not callable(target):
        raise CallableError(f"{key}: {value}: {module} has no function {function}")
    try:
        inspect.signature(target).bind(*SIGNATURES[key])
    except TypeError:
        raise CallableError(f"{key}: {value}: {function} must take "
                            f"({', '.join(SIGNATURES[key])})") from None
    except ValueError:  # a builtin without a signature: calling it will tell
        pass
    _LOADED[cached] = target
    return target


def one_line(error: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
