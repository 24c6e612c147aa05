"""A test that needs Node, chromium or Ray skips loudly where it is missing, and fails where SEQ2EDGE_REQUIRE
(set by .ci/run) names it: CI cannot pass with a surface untested."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

NODE_TEST = "tests/test_js_host.py::test_node_cli_reads_and_numbers_lines_as_seq2edge_decode_does"


def run_without_node(require: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": "/nonexistent", "SEQ2EDGE_REQUIRE": require}  # no `node` on the PATH
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", NODE_TEST], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_a_node_test_without_node_skips_loudly_unless_required_and_then_fails():
    skipped = run_without_node("")
    assert skipped.returncode == 0 and "LOUD SKIP: Node.js or hosts/js/node_modules is missing" in skipped.stdout, skipped.stdout
    failed = run_without_node("node,chromium,ray")
    assert failed.returncode == 1 and "node is missing and SEQ2EDGE_REQUIRE requires it" in failed.stdout, failed.stdout
