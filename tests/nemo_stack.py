"""The NeMo 2.5.3 stack for the nemo tests: imported once here, and a missing or broken stack fails them (never a
silent skip). Install it with scripts/install-nemo-stack (pinned by constraints/nemo-2.5.3.txt)."""

from __future__ import annotations

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

__all__ = ["fdl", "llm", "serialization"]
