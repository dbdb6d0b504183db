"""The docs pages work offline: every asset is served by the service; / leads there when the web page is off."""

import re

import pytest

from app.main import create_app
from tests.conftest import make_settings, serving

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_other_host_and_every_asset_is_served(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    refs = [a or b for a, b in ASSET.findall(r.text)]
    assert any(ref.endswith(".js") for ref in refs), refs
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100, ref


def test_swagger_ui_bundle_asks_no_online_validator(client):
    page = client.get("/docs").text
    assert '"validatorUrl": null' in page


def test_root_sends_a_person_to_the_docs_when_the_web_page_is_off(module_store):
    with serving(create_app(make_settings(module_store, ui=False))) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"] == "/docs"
        assert c.get("/").url.path == "/docs"


def _schema_of(content: dict, components: dict) -> dict:
    schema = content.get("schema", {})
    ref = schema.get("$ref")
    return components[ref.rsplit("/", 1)[-1]] if ref else schema


def test_every_json_response_on_the_docs_page_has_a_real_example(client):
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    missing = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {}).get("application/json")
                if content is None:
                    continue
                schema = _schema_of(content, components)
                is_object = schema.get("type") == "object" or "$ref" in content.get("schema", {})
                if is_object and not (schema.get("examples") or content.get("example") or content.get("examples")):
                    missing.append(f"{method.upper()} {path} {status}")
    assert not missing, missing
