"""Static checks of the web client's files: no HTML built from strings, nothing from the internet,
a Content-Security-Policy that forbids inline scripts, and every module import resolving to a file."""
from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
SOURCES = sorted(p for p in STATIC.rglob("*") if p.suffix in {".js", ".html", ".css"})


def code_of(path: Path) -> str:
    """The file without // line comments (which may name the APIs we avoid, to say we avoid them)."""
    text = path.read_text()
    return re.sub(r"(^|\s)//.*$", "", text, flags=re.M) if path.suffix == ".js" else text


def test_the_client_exists():
    names = {p.relative_to(STATIC).as_posix() for p in SOURCES}
    assert {"index.html", "app.js", "app.css", "js/protocol.js", "js/ui.js", "js/patient.js", "js/survivor.js",
            "js/moderator.js"} <= names


def test_no_html_is_ever_built_from_strings():
    for path in SOURCES:
        if path.suffix != ".js":
            continue
        code = code_of(path)
        for api in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert api not in code, f"{path.name} uses {api}"


def test_nothing_is_fetched_from_another_origin():
    for path in SOURCES:
        code = code_of(path)
        assert not re.search(r"https?://|[\"'(]//[a-z]", code), f"{path.name} names another origin"
        assert "@import" not in code


def test_the_page_forbids_inline_and_foreign_scripts():
    html = (STATIC / "index.html").read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', html).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert "<script>" not in html and "onclick" not in html


def test_every_module_import_names_an_existing_file():
    for path in SOURCES:
        if path.suffix != ".js":
            continue
        for target in re.findall(r'^import .* from "(\.[^"]+)";', path.read_text(), flags=re.M):
            assert (path.parent / target).resolve().is_file(), f"{path.name} imports missing {target}"
