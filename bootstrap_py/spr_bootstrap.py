"""Worker bootstrap: compiled into spr-worker and run once, trusted, before any user code.

Installs the meta-path finder that refuses blocked modules, the signal handlers that turn
the worker's soft deadlines into TimeoutError, and the factory of the restricted `sys` view.
Nothing here is importable by user code: the module is not placed in sys.modules.
"""

import _sitebuiltins
import builtins
import io
import sys
# The C module: `signal` would import enum (and functools) into every worker before its first run.
import _signal as signal
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
# `settrace` and friends stay out of reach. The streams are not copied: _SysView reads and
# writes the real ones.
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
    "setrecursionlimit", "thread_info", "version", "version_info", "displayhook", "excepthook",
)


def _stream(name, writable):
    def get(self):
        return getattr(sys, name)

    def set(self, value):
        setattr(sys, name, value)

    return property(get, set if writable else None, None, "sys." + name + " itself")


class _SysView(types.ModuleType):
    """The run's `sys`: a copy of the harmless attributes, and the real streams. A snippet may
    rebind sys.stdin, sys.stdout and sys.stderr as in python3 (input() and print() read the real
    ones); the engine gives every run fresh streams, so a rebinding ends with its run."""

    stdin = _stream("stdin", True)
    stdout = _stream("stdout", True)
    stderr = _stream("stderr", True)
    __stdin__ = _stream("__stdin__", False)
    __stdout__ = _stream("__stdout__", False)
    __stderr__ = _stream("__stderr__", False)


def make_sys_proxy():
    proxy = _SysView("sys", "A restricted view of the sys module.")
    for name in _SYS_ATTRS:
        if hasattr(sys, name):
            setattr(proxy, name, getattr(sys, name))
    proxy.argv = [""]
    proxy.orig_argv = [sys.executable]
    proxy.path = list(sys.path)
    proxy.path_importer_cache = {}
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
def _checked_as_strided(numpy, original):
    """numpy's as_strided, refusing a view that reaches outside the memory of the array it is made
    from (the unchecked one reads and writes any address). numpy's own calls stay within bounds."""
    attr = {}  # ndarray's own descriptors, taken on first use (numpy may still be importing now)

    def extent(a):
        shape, strides = attr["shape"](a), attr["strides"](a)
        if 0 in shape:
            return None
        start = attr["__array_interface__"](a)["data"][0]
        low = start + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
        high = start + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + attr["itemsize"](a)
        return low, high

    def within(view, root):
        e, r = extent(view), extent(root)
        return e is None or (r is not None and r[0] <= e[0] and e[1] <= r[1])

    def as_strided(x, shape=None, strides=None, subok=False, writeable=True):
        # Built from a plain ndarray first (no subclass hook sees it, and its __array_interface__
        # is numpy's own), checked, and only then handed out.
        if not attr:
            fields = ("__array_interface__", "base", "shape", "strides", "itemsize")
            attr.update({k: numpy.ndarray.__dict__[k].__get__ for k in fields})
        ndarray = numpy.ndarray
        source = numpy.asarray(x)
        root = source
        while isinstance(attr["base"](root), ndarray):
            root = attr["base"](root)
        view = original(source, shape, strides, False, writeable)
        if not within(view, root):
            view = None
            if strides is None and source.size == 1 and shape is not None:
                # numpy's own shape-only dummies (vectorize): every element is the one element.
                view = original(source, shape, (0,) * len(tuple(shape)), False, writeable)
            if view is None or not within(view, root):
                raise PermissionError(
                    "as_strided: the view would reach memory outside its array, which the sandbox refuses"
                    " (sliding_window_view, or strides and a shape that stay within the array, are fine)"
                )
        if subok and isinstance(x, ndarray) and type(x) is not type(view):
            subclass_view = view.view(type=type(x))
            if subclass_view.__array_finalize__ is not None:
                subclass_view.__array_finalize__(x)
            return subclass_view
        return view

    as_strided.__doc__ = original.__doc__
    as_strided._spr_checked = True
    return as_strided


def patch_numpy():
    """Called by the engine once numpy.lib.stride_tricks is loaded in this interpreter; True when
    as_strided is the checked one."""
    numpy = sys.modules.get("numpy")
    patched = False
    for name in ("numpy.lib.stride_tricks", "numpy.lib._stride_tricks_impl"):
        module = sys.modules.get(name)
        original = getattr(module, "as_strided", None)
        if numpy is None or original is None:
            continue
        if not getattr(original, "_spr_checked", False):
            module.as_strided = _checked_as_strided(numpy, original)
        patched = True
    return patched


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
