"""The README's MRT config table matches MRTConfig, and its commands exist."""

import dataclasses
import re
from pathlib import Path

from trl import GRPOConfig

from mrt import MRTConfig

ROOT = Path(__file__).resolve().parents[1]


def readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- mrt-config-table:start -->")[1].split("<!-- mrt-config-table:end -->")[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", table, re.M)}


def test_every_mrt_field_is_documented_with_its_default():
    base = {f.name for f in dataclasses.fields(GRPOConfig)}
    fields = {f.name: f for f in dataclasses.fields(MRTConfig) if f.name not in base}
    rows = readme_rows()
    assert set(rows) == set(fields), f"README table out of sync: {set(rows) ^ set(fields)}"
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING:
            assert rows[name] == f"`{f.default!r}`", f"README default of {name} is {rows[name]}"


def test_readme_commands_are_make_targets():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make train" in readme and "make test" in readme
    assert re.search(r"^train:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
