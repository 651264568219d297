"""Which files a notebook reads that a user's checkout does not have.

Runs inside the notebook's kernel: ``tests/test_notebooks.py`` executes this file's source
there as a module of its own (standard library only, so nothing of the tests is imported
into the kernel). :func:`install` adds an audit hook recording every file opened or listed
beside the repository (as ``../shared`` would be). Not counted: the repository itself;
what was not beside it before the notebook ran (a checkout in the temp folder, as CI's may
be, has the notebook's own temp files beside it); the XLA compilation cache; and the
interpreter's own files, a virtual environment beside the checkout among them: ``sys.prefix``,
site-packages and every ``sys.path`` entry as they are when the audit starts (a folder the
notebook adds to ``sys.path`` itself is still counted).
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

EVENTS = ("open", "os.listdir", "os.scandir")


def interpreter_roots() -> list[Path]:
    """The folders the running interpreter reads its own files from: its prefixes (a venv's
    too), its site-packages and every ``sys.path`` entry."""
    entries = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
               *site.getsitepackages(), site.getusersitepackages(), *sys.path]
    return [Path(e).resolve() for e in entries if e]


class Audit:
    """Decides whether a path read is one a checkout of ``repo`` does not have."""

    def __init__(self, repo, roots, cache=None):
        self.repo = Path(repo).resolve()
        self.beside = self.repo.parent
        self.before = set(os.listdir(self.beside))
        # a root at or above the folder holding the checkout would hide everything beside it
        self.roots = [r for r in map(Path, roots)
                      if r.is_relative_to(self.beside) and r != self.beside]
        self.cache = Path(cache).resolve() if cache else None
        self.outside: list[str] = []

    def reads_outside(self, path) -> bool:
        p = Path(os.fsdecode(os.fspath(path))).resolve()
        if not p.is_relative_to(self.beside) or p.is_relative_to(self.repo):
            return False
        parts = p.relative_to(self.beside).parts
        if parts and parts[0] not in self.before:
            return False
        if self.cache and p.is_relative_to(self.cache):
            return False
        return not any(p.is_relative_to(root) for root in self.roots)

    def hook(self, event, args) -> None:
        if event not in EVENTS or not args or isinstance(args[0], int):
            return
        try:
            outside = self.reads_outside(args[0])
        except (TypeError, ValueError, OSError):
            return
        if outside:
            self.outside.append(str(Path(os.fsdecode(os.fspath(args[0]))).resolve()))


def install(repo=None) -> list[str]:
    """Starts the audit of ``repo`` (default: the parent of the working directory, the
    notebook's ``notebooks/``); returns the list the paths read outside are appended to."""
    audit = Audit(repo or Path.cwd().resolve().parent, interpreter_roots(),
                  os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    sys.addaudithook(audit.hook)
    return audit.outside
