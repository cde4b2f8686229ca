"""Finding the user's code: "package.module:function" references, imported and checked.

Every level of bring-your-own code names its function the same way (`spec.model.entrypoint`,
`spec.data.entrypoint`, `spec.training.entrypoint`), and every failure to find one is the same user
mistake: a module not on the path, a typo in the function's name, a function that cannot take the
arguments Conveyor passes. Each is a `ConfigError` (exit status 2: not retried) that names the field,
what was wrong and the fix, raised before any trial runs. Errors raised while importing the user's
module (a syntax error, a missing dependency) are reported with the last lines of their traceback.

`activate_code` runs first in every `python -m conveyor.trainer` process: it puts the user's code
directory on `sys.path` and `PYTHONPATH` (so what the process starts, a torchrun and its workers, sees it
too). In pods the code arrives packed (a ConfigMap mounted read-only, `CONVEYOR_CODE_ARCHIVE`) and the
root filesystem is read-only, so it is unpacked into the writable temp directory (the pod's /tmp
emptyDir), into a directory named by the archive's digest: the processes of one container unpack it
once (the first to finish renames its copy into place; the others find it there) and a changed archive
never mixes with an old copy.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import os
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from conveyor.sdk import env as sdk_env
from conveyor.trainer.config import ConfigError

TRACEBACK_LINES = 12


def last_lines(error: BaseException, lines: int = TRACEBACK_LINES) -> str:
    """The end of `error`'s traceback: what a user needs to find the line that broke."""
    text = "".join(traceback.format_exception(error)).rstrip().splitlines()
    return "\n".join(text[-lines:])


def load_entrypoint(reference: str, field: str) -> Callable[..., Any]:
    """The function `reference` ("package.module:function") names; `field` is the manifest field that
    gave it, e.g. `model.entrypoint`, for the error message."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f'{field}: {reference!r} is not "package.module:function"')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise ConfigError(
                f"{field}: cannot import module {module_name!r}: no module named {error.name!r}; put its "
                "directory in spec.code.path (or spec.code.configMap, or install it in spec.code.image)"
            ) from error
        raise ConfigError(f"{field}: importing {module_name!r} failed:\n{last_lines(error)}") from error
    except Exception as error:
        raise ConfigError(f"{field}: importing {module_name!r} failed:\n{last_lines(error)}") from error
    function = getattr(module, attribute, None)
    if function is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attribute, names, n=1)
        hint = f"; did you mean {module_name}:{close[0]}?" if close else f"; it defines: {', '.join(names)}"
        raise ConfigError(f"{field}: module {module_name!r} has no {attribute!r}{hint}")
    if not callable(function):
        raise ConfigError(f"{field}: {reference} is a {type(function).__name__}, not a function")
    return function


def check_call(function: Callable[..., Any], field: str, arguments: tuple[str, ...]) -> None:
    """Refuse a function that cannot be called with Conveyor's positional `arguments` (their names are
    only for the message), e.g. `build(options, info)`."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins and C functions: nothing to check before calling
    try:
        signature.bind(*arguments)
    except TypeError as error:
        name = getattr(function, "__qualname__", repr(function))
        raise ConfigError(
            f"{field}: {name}{signature} cannot be called as {name}({', '.join(arguments)}): {error}; "
            f"give it exactly these parameters"
        ) from None


def entrypoint(reference: str, field: str, arguments: tuple[str, ...]) -> Callable[..., Any]:
    """`load_entrypoint` + `check_call`: the function, known to accept Conveyor's arguments."""
    function = load_entrypoint(reference, field)
    check_call(function, field, arguments)
    return function


def _unpack(archive: Path) -> Path:
    """The directory holding `archive`'s files, unpacked under the temp directory once per content."""
    try:
        payload = archive.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"spec.code.configMap: cannot read the packed code at {archive}: {error}; re-run "
            "`conveyor apply -f` to pack spec.code.path again"
        ) from error
    target = Path(tempfile.gettempdir()) / f"conveyor-code-{hashlib.sha256(payload).hexdigest()[:16]}"
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix="conveyor-code-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as packed:
            packed.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ConfigError(
            f"spec.code.configMap: {archive} is not a code archive made by `conveyor apply` ({error}); "
            "re-run `conveyor apply -f` to pack spec.code.path again"
        ) from error
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():  # not another process's copy already in place: a real failure
            raise
    return target


def activate_code(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Put the user's code on the import path of this process and of what it starts: `CONVEYOR_CODE`,
    or `CONVEYOR_CODE_ARCHIVE` unpacked first (then `CONVEYOR_CODE` names the copy). Returns the code
    directory, or None when the pipeline has no code."""
    code = environ.get(sdk_env.CODE)
    archive = environ.get(sdk_env.CODE_ARCHIVE)
    if not code and archive:
        code = str(_unpack(Path(archive)))
        environ[sdk_env.CODE] = code
    if not code:
        return None
    if code not in sys.path:
        sys.path.insert(0, code)
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if code not in paths:
        environ["PYTHONPATH"] = os.pathsep.join([code, *paths])
    return Path(code)
