"""RunnerPolicy: what a run may do, with the original package's fields, defaults and messages."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from . import _core
from .result import RunnerResult

__all__ = ["RunnerPolicy", "RunnerResult"]

DEFAULT_BLOCKED_IMPORTS = ["os", "subprocess", "socket", "ctypes", "importlib"]
DEFAULT_BLOCKED_BUILTINS = ["eval", "exec", "open", "compile", "breakpoint"]

# Fields that live only on the Python side and never reach the engine as policy fields.
_PYTHON_ONLY = {"config_path", "python_executable"}


def _engine_fields() -> frozenset:
    return frozenset(json.loads(_core.normalize_policy("{}")))


_ENGINE_FIELDS = _engine_fields()


@dataclass(slots=True)
class RunnerPolicy:
    """Execution policy for untrusted Python code.

    The first twelve fields are the original package's, in its order and with its defaults;
    the rest are this engine's (all optional). A policy is checked when it is used: an invalid
    value raises ``ValueError`` naming the field.
    """

    mode: str = "restrict"
    """``"restrict"``: everything except the blocked lists; ``"allow"``: only the allowed lists."""
    timeout_seconds: float = 5
    """Wall-clock limit; fractions are honoured (0 means the original's floor of 1 second)."""
    memory_limit_mb: int = 256
    max_output_kb: int = 128
    """Cap on captured stdout and on stderr, each, in KiB (bytes / 1024)."""
    allowed_imports: List[str] = field(default_factory=list)
    blocked_imports: List[str] = field(default_factory=lambda: list(DEFAULT_BLOCKED_IMPORTS))
    allowed_builtins: List[str] = field(default_factory=list)
    blocked_builtins: List[str] = field(default_factory=lambda: list(DEFAULT_BLOCKED_BUILTINS))
    allowed_globals: List[str] = field(default_factory=list)
    blocked_globals: List[str] = field(default_factory=list)
    extra_globals: Dict[str, Any] = field(default_factory=dict)
    config_path: Optional[str] = None
    """When set, runs use the policy read from this TOML file instead of the fields above."""
    # --- this engine's fields -----------------------------------------------------------------
    isolation: str = "fork"
    """``"fork"``, ``"namespace"``, ``"subinterpreter"`` or ``"process"`` (see the README)."""
    cpu_time_seconds: float = 0
    """CPU time cap; 0 leaves only the wall-clock limit."""
    max_result_kb: int = 1024
    """Cap on the JSON text of ``result``."""
    max_stdin_kb: int = 1024
    """Cap on the text a run reads as ``stdin``, in KiB; a longer one answers ``bad_input``."""
    max_host_calls: int = 10000
    """Host function calls one run may make (``functions=``); past it: ``host_call_limit``."""
    max_host_call_kb: Optional[int] = None
    """Cap on one host call's arguments and on its answer (JSON text, KiB); None: ``max_result_kb``."""
    allow_network: bool = False
    """Network sockets, in the host's network namespace."""
    allow_unix_sockets: bool = False
    """``socket(AF_UNIX)``: reaches any unix socket at a path the code can name, the host's included."""
    allowed_read_paths: List[str] = field(default_factory=list)
    """Absolute paths the code may read besides the standard library."""
    scratch_dir: bool = False
    """A private writable working directory per run, removed afterwards."""
    scratch_limit_mb: int = 64
    """Size of a worker's scratch file system (in RAM), in MiB: what its runs may hold in files."""
    trust_domain: str = ""
    """namespace/subinterpreter workers serve only runs with the same key: one key per party."""
    python_executable: Optional[str] = None
    """Run with this interpreter's packages (a venv's ``bin/python``); None: the engine's own."""
    # Fields added later go last, so positional arguments keep their meaning.
    max_files_kb: int = 1024
    """Cap on the files a run returns (``collect=``), in all, in KiB."""

    def __post_init__(self) -> None:
        if self.mode not in {"allow", "restrict"}:
            raise ValueError("mode must be 'allow' or 'restrict'")

    @classmethod
    def from_file(cls, config_path: str) -> "RunnerPolicy":
        """Read a TOML policy file: a ``[policy]`` table or the same keys at top level.

        As in the original, a list the file leaves out is empty: the file states the whole policy.
        """
        values = json.loads(_core.policy_from_file(str(config_path)))
        return cls(**_known(values), config_path=str(config_path))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        _core.normalize_policy(self.to_json())

    def to_json(self) -> str:
        """The engine's fields as JSON text (what the engine receives for a run)."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            if f.name in _PYTHON_ONLY:
                continue
            out[f.name] = getattr(self, f.name)
        if self.python_executable is not None:
            if "python_executable" in _ENGINE_FIELDS:
                out["python_executable"] = os.fspath(self.python_executable)
            elif not _same_interpreter(self.python_executable):
                raise ValueError("'python_executable' other than this interpreter is not supported "
                                 "by this build of the engine")
        return json.dumps(out)

    def resolved(self) -> "RunnerPolicy":
        """This policy, or the one its ``config_path`` names (read now)."""
        if self.config_path is None:
            return self
        loaded = RunnerPolicy.from_file(self.config_path)
        if self.python_executable is not None:
            loaded.python_executable = self.python_executable
        return loaded


def _same_interpreter(path: str) -> bool:
    """Whether `path` is the base interpreter the engine embeds (a venv has packages of its own)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(os.path.join(os.path.dirname(os.path.dirname(path)), "pyvenv.cfg")):
        return False
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(path) == os.path.realpath(base)


def _known(values: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in fields(RunnerPolicy)}
    out = {k: v for k, v in values.items() if k in names}
    if out.get("python_executable") == "":
        out["python_executable"] = None
    return out
