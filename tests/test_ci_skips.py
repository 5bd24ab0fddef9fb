"""Under CI no test may skip: a skip there means something CI should have installed is missing."""

from __future__ import annotations

import pytest
from conftest import REPO

PASSES = "def test_fine():\n    assert True\n"
SKIPS = "import pytest\n\ndef test_needs_something():\n    pytest.skip('needs something')\n"
MODULE_SKIPS = "import pytest\n\npytest.importorskip('a_module_nobody_has')\n\ndef test_a():\n    pass\n"


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, skipping: str) -> pytest.RunResult:
    """A scratch suite of one passing and one skipping file, under this project's conftest."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_passes=PASSES, test_skipping=skipping)
    monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_a_skipped_test_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(pytester, monkeypatch, "true", SKIPS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*skipped under CI, where every test must run*needs something*"])


def test_a_module_skipped_at_import_is_an_error_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(pytester, monkeypatch, "true", MODULE_SKIPS)
    result.assert_outcomes(errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*skipped under CI, where every test must run*a_module_nobody_has*"])


@pytest.mark.parametrize("skipping", [SKIPS, MODULE_SKIPS], ids=["test", "module"])
def test_outside_ci_a_skip_stays_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, skipping: str
) -> None:
    run(pytester, monkeypatch, "", skipping).assert_outcomes(passed=1, skipped=1)
