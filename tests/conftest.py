"""Test-suite hygiene shared by every test."""

import signal

import pytest


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Whatever a test (or a library it drives) does to SIGINT and SIGTERM handlers, the next test starts
    with the handlers as they were, so signal-handling tests never depend on the order tests run in."""
    # (a suite started as a shell's background job inherits SIGINT ignored: tests that need Ctrl-C set it)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        if handler is not None and signal.getsignal(s) is not handler:
            signal.signal(s, handler)
