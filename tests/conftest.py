"""Fixtures shared by several test modules, and the ``isolated`` marker."""

import functools
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on a shared machine spinning OpenMP threads make small convs far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tests that run in a process of their own ------------------------------------------------------------------
# OpenVINO's CPU plugin, once it has compiled and run a model in the pytest process, leaves that process's heap
# corrupted for torch: a training test run later in the same process died with SIGSEGV inside CPython's type
# lookup (reproduced with only test_bench's OpenVINO test before test_classification; not seen when each ran
# alone). Tests marked ``isolated`` therefore run in a fresh interpreter, and their result is reported here.
ISOLATED_ENV = "MOBILENETS_TEST_ISOLATED"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "isolated: run this test in a subprocess of its own (native runtimes)")


def _run_isolated(item: pytest.Item) -> None:
    env = {**os.environ, ISOLATED_ENV: "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rN", item.nodeid]
    result = subprocess.run(cmd, cwd=item.config.rootpath, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"isolated run of {item.nodeid} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    if " passed" not in result.stdout:  # the child skipped it (its own skip condition)
        pytest.skip(f"skipped in its subprocess: {result.stdout.strip().splitlines()[-1:]}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ISOLATED_ENV):
        return
    for item in items:
        if item.get_closest_marker("isolated") and isinstance(item, pytest.Function):
            item.runtest = functools.partial(_run_isolated, item)  # type: ignore[method-assign]
