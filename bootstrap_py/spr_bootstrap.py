"""Worker bootstrap: compiled into spr-worker and run once, trusted, before any user code.

Installs the meta-path finder that refuses blocked modules, the signal handlers that turn
the worker's soft deadlines into TimeoutError, and the factory of the restricted `sys` view.
Nothing here is importable by user code: the module is not placed in sys.modules.
"""

import _sitebuiltins
import builtins
import io
import signal
import sys
import types

import _spr


class _PolicyFinder:
    """First on sys.meta_path: refuses a new import of a module the run's policy blocks."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        message = _spr.import_denied(fullname)
        if message is not None:
            raise ImportError(message, name=fullname)
        return None

    @staticmethod
    def invalidate_caches():
        pass


def _on_wall_clock(signum, frame):
    raise TimeoutError("Execution timed out")


def _on_cpu_time(signum, frame):
    raise TimeoutError("CPU time limit exceeded")


# Attributes of `sys` that user code may see; `modules`, `_getframe`, `meta_path`,
# `settrace` and friends stay out of reach.
_SYS_ATTRS = (
    "abiflags", "base_exec_prefix", "base_prefix", "exec_prefix", "executable", "float_repr_style",
    "getunicodeinternedsize", "orig_argv", "platlibdir", "prefix", "pycache_prefix", "stdlib_module_names",
    "warnoptions", "_xoptions", "get_asyncgen_hooks", "get_coroutine_origin_tracking_depth", "gettrace",
    "getprofile", "getallocatedblocks", "ps1", "ps2", "path_importer_cache", "dont_write_bytecode",
    "api_version", "argv", "byteorder", "builtin_module_names", "copyright", "dont_write_bytecode",
    "exc_info", "exception", "exit", "flags", "float_info", "float_repr_style", "get_int_max_str_digits",
    "getdefaultencoding", "getfilesystemencoding", "getfilesystemencodeerrors", "getrecursionlimit",
    "getrefcount", "getsizeof", "getswitchinterval", "hash_info", "hexversion", "implementation",
    "int_info", "intern", "is_finalizing", "maxsize", "maxunicode", "platform", "set_int_max_str_digits",
    "setrecursionlimit", "stderr", "stdin", "stdout", "thread_info", "version", "version_info",
    "__stdout__", "__stderr__", "__stdin__", "displayhook", "excepthook",
)


def make_sys_proxy():
    proxy = types.ModuleType("sys", "A restricted view of the sys module.")
    for name in _SYS_ATTRS:
        if hasattr(sys, name):
            setattr(proxy, name, getattr(sys, name))
    proxy.argv = [""]
    proxy.orig_argv = [sys.executable]
    proxy.path = list(sys.path)
    proxy.path_importer_cache = {}
    proxy.__stdout__ = sys.stdout
    proxy.__stderr__ = sys.stderr
    proxy.__stdin__ = sys.stdin
    return proxy


class _StdinBytes(io.BytesIO):
    """The bytes under a run's sys.stdin (BytesIO has no name of its own)."""

    name = "<stdin>"
    mode = "rb"


def begin_run(stdin_text):
    """Fresh text streams for one run: what one run reconfigures, the next does not see."""
    out = io.TextIOWrapper(_spr.stream(0), encoding="utf-8", errors="backslashreplace", write_through=True)
    err = io.TextIOWrapper(_spr.stream(1), encoding="utf-8", errors="backslashreplace", write_through=True)
    inp = io.TextIOWrapper(_StdinBytes(stdin_text.encode("utf-8", "surrogateescape")), encoding="utf-8")
    sys.stdout = sys.__stdout__ = out
    sys.stderr = sys.__stderr__ = err
    sys.stdin = sys.__stdin__ = inp


_real_settrace = sys.settrace


def _settrace(function):
    # doctest and others call settrace(None) to clear a tracer; with none set that changes nothing.
    if function is None and sys.gettrace() is None:
        return None
    return _real_settrace(function)


_saved = {}


def after_namespace_run():
    """Undo interpreter-wide settings a run may have changed, so benign code cannot break the
    next run on this worker (namespace mode). Not a security boundary: see the README."""
    if sys.getrecursionlimit() != _saved["recursionlimit"]:
        sys.setrecursionlimit(_saved["recursionlimit"])
    if _saved["int_digits"] is not None and sys.get_int_max_str_digits() != _saved["int_digits"]:
        sys.set_int_max_str_digits(_saved["int_digits"])
    if signal.getsignal(signal.SIGALRM) is not _on_wall_clock:
        signal.signal(signal.SIGALRM, _on_wall_clock)
    if signal.getsignal(signal.SIGVTALRM) is not _on_cpu_time:
        signal.signal(signal.SIGVTALRM, _on_cpu_time)
    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        if signal.getitimer(timer) != (0.0, 0.0):
            signal.setitimer(timer, 0)
    if sys.meta_path[:1] != [_PolicyFinder]:
        sys.meta_path[:] = _saved["meta_path"]


def install(main_interpreter=True):
    sys.meta_path.insert(0, _PolicyFinder)
    sys.settrace = _settrace
    # What the site module gives every python3 session (site is not run in the worker).
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    # A new sub-interpreter starts without the int/str conversion limit: set CPython's default.
    if hasattr(sys, "get_int_max_str_digits") and sys.get_int_max_str_digits() == 0:
        sys.set_int_max_str_digits(sys.int_info.default_max_str_digits)
    if main_interpreter:
        # Python runs signal handlers only in the main interpreter; sub-interpreters rely on
        # the supervisor's hard deadline instead.
        signal.signal(signal.SIGALRM, _on_wall_clock)
        signal.signal(signal.SIGVTALRM, _on_cpu_time)
    _spr.set_sys_proxy_factory(make_sys_proxy)
    _saved["recursionlimit"] = sys.getrecursionlimit()
    _saved["int_digits"] = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else None
    _saved["meta_path"] = list(sys.meta_path)
