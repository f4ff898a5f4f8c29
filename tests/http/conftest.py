"""Fixtures of the HTTP service's tests: a shared server, and the OpenAPI file every answer is checked against."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from openapi_check import OpenApi  # noqa: E402
from spr_http import Server  # noqa: E402


@pytest.fixture(scope="session")
def api():
    return OpenApi(os.path.join(os.environ["SPR_SOURCE_DIR"], "docs", "openapi.yaml"))


@pytest.fixture(scope="module")
def server():
    s = Server("--workers", "2", "--max-concurrent", "16", "--read-timeout", "5", "--max-body-mb", "1", "--timeout", "60")
    yield s
    assert s.stop() == 0
