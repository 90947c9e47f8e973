"""
heimdall's public API (in klein's style): thin lazy re-exports of the
objects defined in the private modules, and an import that stays cheap.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import heimdall

PUBLIC = [name for name in heimdall.__all__ if name != "__version__"]


def test_all_is_the_export_table():
    assert len(set(heimdall.__all__)) == len(heimdall.__all__)
    assert set(PUBLIC) == set(heimdall._EXPORTS)
    assert "__version__" in heimdall.__all__
    assert isinstance(heimdall.__version__, str)
    assert sorted(dir(heimdall)) == sorted(heimdall.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_the_original(name):
    module = importlib.import_module(heimdall._EXPORTS[name])
    assert getattr(heimdall, name) is getattr(module, name)


def test_some_originals_by_hand():
    import heimdall.embed
    import heimdall.pool.pool
    import heimdall.proxy.resource
    import heimdall.proxy.site
    import heimdall.proxy.upstream

    assert heimdall.BalancerResource is heimdall.proxy.resource.BalancerResource
    assert heimdall.HeimdallSite is heimdall.proxy.site.HeimdallSite
    assert heimdall.UpstreamPool is heimdall.proxy.upstream.UpstreamPool
    assert heimdall.BackendPool is heimdall.pool.pool.BackendPool
    assert heimdall.balancer_resource is heimdall.embed.balancer_resource


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        heimdall.no_such_name  # noqa: B018


def test_type_checking_imports_match_the_exports():
    """
    The TYPE_CHECKING block (what type checkers and IDEs see) names the
    same objects, from the same modules, as the lazy table.
    """
    tree = ast.parse(Path(heimdall.__file__).read_text())
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        seen[alias.asname or alias.name] = stmt.module
    assert seen == heimdall._EXPORTS


def test_testing_module_names_resolve():
    import heimdall.testing

    for name in heimdall.testing.__all__:
        assert getattr(heimdall.testing, name).__module__ == "heimdall.testing"


def test_import_installs_no_reactor():
    code = "import sys, heimdall; assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
