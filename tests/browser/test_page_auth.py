"""The web page on a service that needs API keys: it asks for the key once, keeps it for the browser
session, and says when an action needs the admin key."""

from __future__ import annotations

import pytest

from app.devserver import Server
from tests.browser.conftest import open_page, screenshot

pytestmark = [pytest.mark.server, pytest.mark.browser]

USER_KEY, ADMIN_KEY = "user-key-123", "admin-key-456"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"CHARRNN_API_KEY": USER_KEY, "CHARRNN_ADMIN_API_KEY": ADMIN_KEY}
    with Server(tmp_path_factory.mktemp("browser-auth"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def page(browser, server):
    page, _ = open_page(browser, server.url + "/")
    yield page
    page.context.close()


def enter_key(page, key: str) -> None:
    page.wait_for_selector("#key-dialog", state="visible")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")


def test_without_a_key_the_page_asks_for_one(page):
    page.wait_for_selector("#key-dialog", state="visible")
    assert "needs an API key" in page.text_content("#key-reason")
    assert page.evaluate("document.activeElement.id") == "key-input"  # ready to type
    assert page.get_attribute("#key-input", "type") == "password"
    assert page.is_visible("#service-status")  # /health is public: the page still says how the service is
    screenshot(page, "key-prompt-1280")


def test_a_wrong_key_is_refused_and_a_right_one_is_kept_for_the_session(page, server):
    enter_key(page, "wrong")
    page.wait_for_selector("#key-reason >> text=not accepted")
    assert page.is_visible("#key-dialog")
    enter_key(page, USER_KEY)
    page.wait_for_selector("#key-dialog", state="hidden")
    page.wait_for_selector("#pg-model option[value='default']", state="attached")
    page.fill("#pg-temperature", "0")
    page.fill("#pg-max", "11")
    page.click("#complete")  # streamed: fetch sends the key, which EventSource could not
    page.wait_for_selector(".choice-head >> text=finish")
    assert page.text_content(".choice-text") == "good i am fine "
    page.reload()  # kept for the browser session: no second prompt
    page.wait_for_selector("#pg-model option[value='default']", state="attached")
    assert page.is_hidden("#key-dialog")
    assert page.text_content("#key-button") == "API key ✓"


def test_training_with_the_user_key_says_the_admin_key_is_needed(page):
    page.click("#tab-train")
    page.fill("#t-name", "greetings")
    page.fill("#t-text", "hey how are you\ngood i am fine")
    page.click("label[for=t-lines]")
    page.click("#t-start")
    page.wait_for_selector("#key-dialog", state="visible")
    assert "need the admin API key" in page.text_content("#key-reason")
    error = page.text_content("#t-error")
    assert "admin API key" in error and "HTTP 401" in error
    enter_key(page, ADMIN_KEY)
    page.wait_for_selector("#key-dialog", state="hidden")
    page.click("#t-start")
    page.wait_for_selector("#job-status >> text=succeeded", timeout=60_000)
    assert page.is_hidden("#t-error")
