"""Worker bootstrap: compiled into spr-worker and run once, trusted, before any user code.

Installs the meta-path finder that refuses blocked modules, the signal handlers that turn
the worker's soft deadlines into TimeoutError, and the factory of the restricted `sys` view.
Nothing here is importable by user code: the module is not placed in sys.modules.
"""

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
    proxy.path = list(sys.path)
    proxy.__stdout__ = sys.stdout
    proxy.__stderr__ = sys.stderr
    return proxy


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


def split_last_expression(source):
    """Sessions: (code without a trailing expression statement, that expression compiled for eval or
    None), so the engine can show the expression's repr as a REPL would. The session worker imports
    `ast` before its first call; it is taken from sys.modules so no import runs under a policy."""
    ast = sys.modules["ast"]
    tree = ast.parse(source, "<string>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), "<string>", "eval")
    return compile(tree, "<string>", "exec"), last


def install(main_interpreter=True):
    sys.meta_path.insert(0, _PolicyFinder)
    if main_interpreter:
        # Python runs signal handlers only in the main interpreter; sub-interpreters rely on
        # the supervisor's hard deadline instead.
        signal.signal(signal.SIGALRM, _on_wall_clock)
        signal.signal(signal.SIGVTALRM, _on_cpu_time)
    _spr.set_sys_proxy_factory(make_sys_proxy)
    _saved["recursionlimit"] = sys.getrecursionlimit()
    _saved["int_digits"] = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else None
    _saved["meta_path"] = list(sys.meta_path)
