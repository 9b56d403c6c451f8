"""The README and docs/ stay true: the MRTConfig table matches the code, the commands exist, every link resolves,
every docs page is on the README's map, and the Layout names every module and script (and nothing else)."""

import dataclasses
import re
from pathlib import Path

from trl import GRPOConfig

from mrt import MRTConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n")[1].split("\n## ")[0]


def config_rows() -> dict[str, str]:
    text = (DOCS / "configuration.md").read_text()
    table = text.split("<!-- mrt-config-table:start -->")[1].split("<!-- mrt-config-table:end -->")[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", table, re.M)}


def test_every_mrt_field_is_documented_with_its_default():
    base = {f.name for f in dataclasses.fields(GRPOConfig)}
    fields = {f.name: f for f in dataclasses.fields(MRTConfig) if f.name not in base}
    rows = config_rows()
    assert set(rows) == set(fields), f"docs/configuration.md table out of sync: {set(rows) ^ set(fields)}"
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING:
            assert rows[name] == f"`{f.default!r}`", f"docs/configuration.md default of {name} is {rows[name]}"


def test_readme_commands_are_make_targets():
    readme = README.read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make train" in readme and "make test" in readme
    assert re.search(r"^train:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_link_resolves():
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_every_docs_page_is_on_the_map():
    listed = set(LINK.findall(section(README.read_text(), "Documentation")))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= listed, f"docs pages missing from the README's Documentation map: {sorted(pages - listed)}"


def test_layout_names_every_module_and_script():
    layout = section(README.read_text(), "Layout")
    named = set(re.findall(r"^\s+((?:src|scripts)/\S+\.py)\b", layout, re.M))
    files = {str(p.relative_to(ROOT)) for d in ("src/mrt", "scripts") for p in (ROOT / d).rglob("*.py")
             if p.name != "__init__.py"}
    assert files <= named, f"README Layout misses {sorted(files - named)}"
    assert named <= files, f"README Layout names files that do not exist: {sorted(named - files)}"
