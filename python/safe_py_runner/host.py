"""Host functions: Python callables that a run's code calls by name (``functions={"name": fn}``)."""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

if TYPE_CHECKING:
    import asyncio

__all__ = ["HostFunctions", "adapt", "merge"]

HostFunctions = Mapping[str, Callable[..., Any]]
"""Name -> callable. The run's code sees each name as a plain function and as ``host.<name>``."""


async def _awaited(value: Any) -> Any:
    return await value


def _adapter(fn: Callable[..., Any], loop: Optional[asyncio.AbstractEventLoop]) -> Callable[[str, str], str]:
    # Called by the engine on the run's helper thread, with the arguments' JSON text; returns the
    # answer's. An exception becomes host.HostFunctionError in the run, with the exception's text.
    def call(args_json: str, kwargs_json: str) -> str:
        value = fn(*json.loads(args_json), **json.loads(kwargs_json))
        if inspect.isawaitable(value):
            import asyncio  # only for async host functions: importing the package does not load it

            if loop is not None and not loop.is_closed():
                # run_async: on the caller's event loop, so the coroutine may use the loop's objects.
                value = asyncio.run_coroutine_threadsafe(_awaited(value), loop).result()
            else:
                value = asyncio.run(_awaited(value))
        return json.dumps(value, allow_nan=False)

    return call


def adapt(functions: Optional[HostFunctions],
          loop: Optional[asyncio.AbstractEventLoop] = None) -> Optional[Dict[str, Callable[[str, str], str]]]:
    """Checks ``functions`` and wraps each for the engine; None when there are none."""
    if functions is None:
        return None
    if not isinstance(functions, Mapping):
        raise TypeError("'functions' must be a dict of name -> callable")
    out: Dict[str, Callable[[str, str], str]] = {}
    for name, fn in functions.items():
        if not isinstance(name, str):
            raise TypeError("host function names must be str")
        if not callable(fn):
            raise TypeError(f"host function {name!r} is not callable")
        out[name] = _adapter(fn, loop)
    return out or None


def merge(base: Optional[HostFunctions], extra: Optional[HostFunctions]) -> Optional[HostFunctions]:
    """The runner's functions with a run's on top (a name in both: the run's)."""
    if not base:
        return extra or None
    if not extra:
        return base
    merged = dict(base)
    merged.update(extra)
    return merged
