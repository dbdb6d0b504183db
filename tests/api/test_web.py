"""The web page as served: its policy, its files (all local, vendored with a license), and the switch
that turns it off. What it does in a browser is tested in tests/browser/."""

from __future__ import annotations

import hashlib
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.api.web import WEB_DIR
from app.main import create_app
from tests.conftest import make_settings, serving

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
}


def policy_of(header: str) -> dict[str, str]:
    directives = (d.strip().split(None, 1) for d in header.split(";") if d.strip())
    return {d[0]: d[1] if len(d) > 1 else "" for d in directives}


class Markup(HTMLParser):
    """What a Content-Security-Policy without 'unsafe-inline' would refuse, and what the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.assets: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = "src" not in attrs
            if "src" in attrs:
                self.assets.append(attrs["src"])
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.assets.append(attrs["href"])

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append("<script> with a body")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def test_the_page_is_served_at_the_root_with_a_strict_content_security_policy(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    policy = policy_of(r.headers["content-security-policy"])
    for directive, value in POLICY.items():
        assert policy[directive] == value, directive
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert "'unsafe-eval'" not in r.headers["content-security-policy"]
    assert "<title>charrnn" in r.text


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(client):
    page = client.get("/").text
    markup = Markup()
    markup.feed(page)
    assert markup.inline == []
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert markup.assets, "the page loads no script or style"
    for asset in markup.assets:
        assert asset.startswith("ui/"), asset  # relative: the service's own, also behind a path prefix
        r = client.get("/" + asset)
        assert r.status_code == 200, asset
        assert len(r.content) > 100, asset
        kind = "javascript" if asset.endswith(".js") else "css"
        assert kind in r.headers["content-type"], asset
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_script_never_inserts_text_as_html():
    script = (WEB_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert 'setAttribute("style"' not in script and "setAttribute('style'" not in script


def test_the_page_is_public_while_the_api_behind_it_needs_the_key(tmp_path):
    settings = make_settings(tmp_path, api_key="user-key")
    with serving(create_app(settings), headers={"Authorization": "Bearer user-key"}) as c:
        anonymous = {"Authorization": ""}
        assert c.get("/", headers=anonymous).status_code == 200
        assert c.get("/ui/app.js", headers=anonymous).status_code == 200
        assert c.get("/models", headers=anonymous).status_code == 401


def test_with_the_web_page_off_the_root_leads_to_the_docs_and_its_files_are_not_served(module_store):
    with serving(create_app(make_settings(module_store, ui=False))) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/docs"
        assert c.get("/ui/app.js").status_code == 404


def vendored() -> list[tuple[str, str, str]]:
    """(folder, version, license) rows of app/web/vendor/README.md's table."""
    readme = (WEB_DIR / "vendor" / "README.md").read_text()
    return re.findall(r"^\| `([a-z0-9-]+)/` \| `[^`]+` \| ([0-9.]+) \| (\w+) ", readme, re.M)


def test_every_vendored_library_has_its_version_license_and_recorded_hashes():
    rows = vendored()
    assert [folder for folder, _, _ in rows] == sorted(p.name for p in (WEB_DIR / "vendor").iterdir() if p.is_dir())
    readme = (WEB_DIR / "vendor" / "README.md").read_text()
    for folder, version, license_name in rows:
        directory = WEB_DIR / "vendor" / folder
        assert (directory / "VERSION").read_text().strip() == version
        assert license_name in (directory / "LICENSE").read_text()
        for path in directory.iterdir():
            if path.name in ("VERSION", "LICENSE"):
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert f"`{path.name}` {digest}" in readme, f"{path.name}: its hash is not the one recorded"
    assert "1.6.32" in (WEB_DIR / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:200]


def test_the_web_files_are_installed_with_the_package():
    """A non-editable install (the Docker image) carries every file of app/web/ (package-data)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    files = [p.relative_to(WEB_DIR.parent).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()]
    globs = [re.compile(re.escape(pattern).replace(r"\*", "[^/]*")) for pattern in patterns]  # * stops at /
    missing = [f for f in files if not any(g.fullmatch(f) for g in globs)]
    assert not missing, missing


@pytest.mark.parametrize("name", ["index.html", "app.js", "app.css"])
def test_the_pages_own_files_are_served_under_ui(client, name):
    r = client.get(f"/ui/{name}")
    assert r.status_code == 200
    assert r.content == (WEB_DIR / name).read_bytes()


def test_the_advanced_training_fields_hint_the_recommended_settings_of_a_corpus():
    """Each advanced field's placeholder is the value /train chooses for a corpus like the bench's
    (app/lm/default.py), so that the page does not drift from the settings chooser."""
    from app.lm import default

    script = (WEB_DIR / "app.js").read_text()
    fields = dict(
        re.findall(r"^\s+(\w+): \"(t-[\w-]+)\",$", script.split("const ADVANCED = {", 1)[1].split("};")[0], re.M)
    )
    model, train = default.corpus_settings(1_000_000)
    chosen = model | train.to_json()
    html = (WEB_DIR / "index.html").read_text()
    assert len(fields) >= 10
    for name, element in fields.items():
        placeholder = re.search(rf'id="{element}"[^>]*placeholder="([^"]*)"', html)
        assert placeholder is not None, element
        assert float(placeholder.group(1)) == float(chosen[name]), (name, placeholder.group(1), chosen[name])
