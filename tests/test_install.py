"""workflow/install.py: pip's configuration handed to uv (the rest is `make install`, which CI runs)."""
from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "workflow"))
import install  # noqa: E402

LISTED = """:env:.cert='/etc/ssl/certs/ca.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
freeze.all='true'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'
install.index-url='https://mirror.example/simple'
"""


def test_pips_indexes_links_constraints_and_certificate_reach_uv():
    settings = install.parse_pip_config(LISTED)
    assert settings == {"cert": "/etc/ssl/certs/ca.crt", "default-timeout": "180", "find-links": "/opt/wheels",
                        "constraint": "/etc/xdg/pip/constraints.txt", "index-url": "https://mirror.example/simple",
                        "extra-index-url": "file:///opt/a/simple file:///opt/b/simple"}
    assert install.uv_arguments(settings) == [
        "--index-strategy", "unsafe-best-match", "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
        "--find-links", "/opt/wheels", "--constraint", "/etc/xdg/pip/constraints.txt"]


def test_no_pip_configuration_leaves_uv_its_defaults():
    assert install.parse_pip_config("") == {}
    assert install.uv_arguments({}) == ["--index-strategy", "unsafe-best-match"]
