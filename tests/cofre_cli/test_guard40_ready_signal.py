"""A worker's ready signal without module state (session 40; STYLE: "No global mutable
state outside the app factory").

The write end of the supervisor's pipe was a module global of `cofre_cli._ready_signal`,
set by `cofre_cli.workers._worker` and read by `serve_worker`'s readiness thread. The
worker target is Cofre's own (`run_workers` spawns `_worker`, not uvicorn), so the
announcement is handed to the target as an argument: a one-shot callable holding the
pipe and the worker's index."""

from __future__ import annotations

import ast
import inspect
import multiprocessing

import pytest

from cofre_cli import _ready_signal
from cofre_cli._ready_signal import supervisor_announcer


def test_the_module_keeps_no_state_of_its_own() -> None:
    tree = ast.parse(inspect.getsource(_ready_signal))
    assigned = [
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and not target.id.isupper()
    ]
    assert not assigned, f"module-level state: {assigned}"
    assert not any(isinstance(node, ast.Global) for node in ast.walk(tree)), "a global statement"


def test_the_announcer_sends_the_index_once_then_closes() -> None:
    heard, told = multiprocessing.Pipe(duplex=False)
    announce = supervisor_announcer(told, 3)
    announce()
    announce()  # once only: its end is closed after the first
    assert heard.recv() == 3
    assert told.closed
    with pytest.raises(EOFError):  # one message, then its end closed
        heard.recv()
    heard.close()


def test_an_announcer_without_a_pipe_does_nothing() -> None:
    supervisor_announcer(None, 0)()
