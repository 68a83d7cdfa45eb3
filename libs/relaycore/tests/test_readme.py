"""The README's configuration table documents every setting, with its true default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from relaycore.settings import Settings

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
ROW = re.compile(r"^\|\s*`(RELAY_[A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*$")
FIELDS = {spec.metadata["env"]: spec for spec in dataclasses.fields(Settings)}


def _documented() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in README.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def test_every_setting_is_in_the_readme() -> None:
    missing = sorted(set(FIELDS) - set(_documented()))
    assert not missing, f"add these to the README's configuration table: {missing}"


@pytest.mark.parametrize("variable", sorted(FIELDS))
def test_readme_default_is_the_real_default(variable: str) -> None:
    documented = _documented()
    assert variable in documented, f"{variable} is not in the README's configuration table"
    default, meaning = documented[variable]
    assert meaning, f"{variable} has no meaning in the README"
    spec = FIELDS[variable]
    if default == "(unset)":
        assert not spec.default, f"{variable} defaults to {spec.default!r}, not unset"
        return
    literal = re.fullmatch(r"`([^`]*)`", default)
    assert literal, f"{variable}: write the default as `value` or (unset), not {default!r}"
    # The documented text, read the way the service reads the variable, gives the default.
    assert spec.metadata["parse"](literal[1]) == spec.default


def test_readme_documents_no_setting_that_does_not_exist() -> None:
    extra = sorted(set(_documented()) - set(FIELDS) - MAKE_RUN_VARIABLES)
    assert not extra, f"the README documents settings the code does not read: {extra}"


MAKE_RUN_VARIABLES = {"RELAY_VALKEY_PORT", "RELAY_DATA_DIR"}


def test_make_run_variables_are_documented() -> None:
    documented = _documented()
    for variable in ("RELAY_VALKEY_PORT", "RELAY_DATA_DIR"):
        assert variable in documented


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text[text.index("```") : text.index("```", text.index("```") + 3)]
    assert "make run" in first_block
    assert "make test" in first_block


def test_readme_key_names_match_the_code() -> None:
    from relaycore.keys import idempotency_key, rate_limit_key, stream_key

    text = README.read_text()
    assert stream_key("<topic>") in text
    assert idempotency_key("<topic>", "<key>") in text
    assert rate_limit_key("<principal>") in text
    assert f"XLEN '{stream_key('test')}'" in text
