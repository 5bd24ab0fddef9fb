"""The NeMo 2.5.3 stack for the nemo tests: imported once here, and a missing or broken stack fails them (never a
silent skip). Install it with scripts/install-nemo-stack (pinned by constraints/nemo-2.5.3.txt)."""

from __future__ import annotations

import signal

import pytest

try:
    import fiddle as fdl
    from fiddle._src.experimental import serialization
    from nemo.collections import llm
except Exception as exc:  # noqa: BLE001 - any broken dependency counts as missing
    pytest.fail(
        f"the NeMo 2.5.3 stack is not importable ({type(exc).__name__}: {exc}); the nemo tests need it: "
        "install it with scripts/install-nemo-stack (constraints/nemo-2.5.3.txt)",
        pytrace=False,
    )

from orchestrator.train import nemo_stop


@pytest.fixture
def fresh_signals(monkeypatch: pytest.MonkeyPatch):
    """No stop signal remembered from another test, and the process's handlers as they were afterwards
    (the trainers install theirs). Tests take it with ``pytestmark = pytest.mark.usefixtures("fresh_signals")``."""
    monkeypatch.setattr(nemo_stop, "_received", [])
    saved = {sig: signal.getsignal(sig) for sig in nemo_stop.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


__all__ = ["fdl", "fresh_signals", "llm", "serialization"]
