"""Shared fixtures of the Python package's tests: the isolation mode under test and a Runner."""

import os

import pytest

from safe_py_runner import Runner, RunnerPolicy

MODES = ["fork", "namespace", "subinterpreter", "process"]


@pytest.fixture(scope="session")
def runner():
    with Runner(workers=2) as r:
        yield r


@pytest.fixture
def tmp_policy(tmp_path):
    """Writes a TOML policy file and returns its path."""

    def write(text: str) -> str:
        path = tmp_path / "policy.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def policy(**fields) -> RunnerPolicy:
    return RunnerPolicy(**fields)


SECRET = os.environ.setdefault("SPR_PY_TEST_SECRET", "spr-secret-4f2a9c")
