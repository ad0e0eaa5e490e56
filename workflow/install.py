"""Install the project and its test extra into a virtual environment: `make install`.

With uv (from PyPI) where it can, because on a fresh machine most of the install is unpacking PyTorch's
wheels, which uv does in parallel and pip one file at a time (docs/notes/install-with-uv.md); with pip
where uv is unavailable or fails. uv reads no pip configuration, so pip's own (`pip config list`: index,
extra indexes, find-links, constraints, certificate; from pip.conf or PIP_* variables) is handed to it,
and every index is searched for the best version, as pip does (`--index-strategy unsafe-best-match`):
the same packages either way, from the same places.

    python workflow/install.py .venv/bin/python '.[test]'
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

# pip option -> uv option; a value of several words (extra-index-url, find-links) is one option each
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def pip_config(python: str) -> dict[str, str]:
    return parse_pip_config(subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                                           text=True).stdout)


def parse_pip_config(listed: str) -> dict[str, str]:
    """pip's effective install settings from `pip config list` (`global.key='value'` lines, `:env:.key`
    for PIP_* variables, listed in pip's order of precedence, so a later line wins)."""
    settings = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if scope.lstrip(":") in ("global", "install", "env:") and value:
            settings[name] = " ".join(shlex.split(value))
    return settings


def uv_arguments(settings: dict[str, str]) -> list[str]:
    arguments = ["--index-strategy", "unsafe-best-match"]
    for name, option in OPTIONS.items():
        for value in settings.get(name, "").split():
            arguments += [option, value]
    return arguments


def main(python: str, *requirements: str) -> int:
    settings = pip_config(python)
    env = dict(os.environ)
    if "cert" in settings:
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    uv = subprocess.run([python, "-m", "pip", "install", "--quiet", "uv"], capture_output=True, text=True)
    if uv.returncode == 0:
        done = subprocess.run([python, "-m", "uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
                               *uv_arguments(settings), *(a for r in requirements for a in ("-e", r))], env=env)
        if done.returncode == 0:
            return 0
        print("install.py: uv failed (above); installing with pip instead", file=sys.stderr)
    else:
        print(f"install.py: uv not installable ({uv.stderr.strip()[-300:]}); installing with pip", file=sys.stderr)
    return subprocess.run([python, "-m", "pip", "install", "--quiet", *(a for r in requirements for a in ("-e", r))]
                          ).returncode


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], *sys.argv[2:]))
