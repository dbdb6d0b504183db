"""The web page in a real browser: playground, training dashboard, models and compare, on a real server.

The tests of this module share one page, in order, as a person would use it: the models trained in
the Train tab are the ones the Models tab then compares.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from app.devserver import Server
from tests.browser.conftest import DESKTOP, PHONE, open_page, screenshot

pytestmark = [pytest.mark.server, pytest.mark.browser]

XSS = "<img src=x onerror=window.__pwned=1>"
CORPUS = "the quick brown fox jumps over the lazy dog.\nhow vexingly quick daft zebras jump!\n" * 40


# the default model decodes a character in a few microseconds, so a completion streams in several
# events only when it is longer than one engine tick's characters (engine.MAX_STEPS_PER_TICK)
LONG = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("browser"), env={"CHARRNN_MAX_NEW_CHARS": str(LONG)}) as s:
        yield s


@pytest.fixture(scope="module")
def session(browser, server):
    page, console = open_page(browser, server.url + "/")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    yield page, console
    page.context.close()


@pytest.fixture
def page(session):
    return session[0]


def tab(page, name: str) -> None:
    page.click(f"#tab-{name}")
    page.wait_for_selector(f"#panel-{name}", state="visible")


def fill_settings(page, **fields) -> None:
    ids = {"max": "#pg-max", "temperature": "#pg-temperature", "seed": "#pg-seed", "n": "#pg-n", "regex": "#pg-regex"}
    for name, value in fields.items():
        if name == "stream":
            page.set_checked("#pg-stream", value)
        elif name == "model":
            page.select_option("#pg-model", value)
        else:
            page.fill(ids[name], str(value))


def complete(page, prefix: str, **fields) -> str:
    """Completes `prefix` from the playground and returns the text shown (prefix and completion)."""
    tab(page, "playground")
    page.fill("#prefix", prefix)
    fill_settings(page, **fields)
    page.click("#complete")
    page.wait_for_selector("#complete:not([disabled])")
    page.wait_for_selector(".choice-head >> text=finish")
    return page.locator(".choice-text").first.text_content()


def not_pwned(page) -> None:
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0  # the markup stayed text: no element was made of it


def test_the_page_loads_without_console_errors_and_its_tabs_work_by_keyboard(session):
    page, console = session
    page.wait_for_selector("#service-status.is-ready")
    assert page.title().startswith("charrnn")
    page.wait_for_selector("#pg-model option[value='default']", state="attached")
    for name in ("train", "models", "playground"):
        tab(page, name)
        assert page.get_attribute(f"#tab-{name}", "aria-selected") == "true"
    # arrow keys move between the tabs (one tab stop), as the ARIA tabs pattern has it
    page.focus("#tab-playground")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-train") and page.is_hidden("#panel-playground")
    assert page.evaluate("document.activeElement.id") == "tab-train"
    page.keyboard.press("End")
    assert page.is_visible("#panel-models")
    page.keyboard.press("Home")
    assert page.is_visible("#panel-playground")
    assert page.url.endswith("#playground")
    assert console.errors == []


def test_completing_good_with_the_default_model_shows_the_tutorials_text(page):
    assert complete(page, "good", max=11, temperature=0) == "good i am fine "
    assert complete(page, "good", max=11, temperature=0, stream=False) == "good i am fine "
    assert "finish: length" in page.text_content(".choice-head")
    assert "model default" in page.text_content("#pg-meta")


def test_a_streamed_sampled_completion_grows_over_time(page):
    tab(page, "playground")
    page.fill("#prefix", "h")
    fill_settings(page, max=LONG, temperature=1.0, seed="", stream=True)
    # the number of characters shown, each time the output changes
    page.evaluate(
        """() => {
          window.__lengths = [];
          let shown = 0;
          new MutationObserver((records) => {
            for (const r of records) {
              for (const n of r.addedNodes) if (n.classList && n.classList.contains('ch')) shown++;
            }
            window.__lengths.push(shown);
          }).observe(document.getElementById('outputs'), {childList: true, subtree: true});
        }"""
    )
    page.click("#complete")
    page.wait_for_selector(".choice-head >> text=finish", timeout=30_000)
    lengths = page.evaluate("window.__lengths")
    grown = sorted({n for n in lengths if n > 0})
    assert len(grown) >= 3, lengths  # shown in several steps, not at once at the end
    assert grown[-1] == LONG
    assert page.locator(".choice-text .ch").count() == LONG


def test_hovering_or_focusing_a_character_shows_alternatives_that_sum_to_at_most_100(page):
    complete(page, "good", max=11, temperature=0)
    chars = page.locator(".choice-text .ch")
    for i in range(chars.count()):
        chars.nth(i).hover()
        page.wait_for_selector("#tip", state="visible")
        shares = page.locator("#tip .tip-pct").all_text_contents()
        assert len(shares) == 5, shares
        values = [0.0 if s.startswith("<") else float(s.rstrip("%")) for s in shares]
        assert 0 < sum(values) <= 100, shares
        assert re.search(r"\d+(\.\d)?% · \d+\.\d\d bits", page.text_content("#tip .tip-title"))
    # by keyboard: one tab stop into the text, arrow keys along it, the tooltip follows the focus
    page.mouse.move(0, 0)
    page.focus(".choice-text .ch[tabindex='0']")
    assert page.is_visible("#tip")
    first = page.text_content("#tip .tip-title")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.textContent") == "i"
    assert page.text_content("#tip .tip-title") != first
    assert page.evaluate("document.activeElement.getAttribute('aria-describedby')") == "tip"
    page.keyboard.press("Escape")
    assert page.is_hidden("#tip")


def test_clicking_a_character_generates_again_from_there(page):
    complete(page, "good", max=11, temperature=0)
    page.locator(".choice-text .ch").nth(3).click()  # the "a" of " i am fine "
    assert page.input_value("#prefix") == "good i "
    page.wait_for_selector(".choice-head >> text=finish")
    assert page.text_content(".choice-text .prefix-text") == "good i "
    assert page.text_content(".choice-text").startswith("good i am fine ")


def test_copy_clear_and_the_request_as_a_curl_command(page, server):
    complete(page, "good", max=11, temperature=0)
    page.click("#copy-output")
    page.wait_for_selector("#pg-notice >> text=Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "good i am fine "
    page.click("#copy-curl")
    command = page.text_content("#curl")
    assert page.evaluate("navigator.clipboard.readText()") == command
    assert command.startswith(f"curl -sN {server.url}/complete")
    body = json.loads(re.search(r"-d '(.*)'$", command, re.S).group(1).replace("'\\''", "'"))
    assert body["prefix"] == "good" and body["max_new_chars"] == 11 and body["temperature"] == 0
    body.pop("stream")
    answer = httpx.post(server.url + "/complete", json=body, timeout=30).json()
    assert answer["choices"][0]["text"] == "good i am fine "  # the command asks for what the page showed
    page.click("#clear-output")
    assert page.locator(".choice").count() == 0
    assert page.input_value("#prefix") == "good"


def test_an_error_from_the_api_appears_with_its_message(page):
    tab(page, "playground")
    page.fill("#prefix", "good")
    fill_settings(page, max=11, regex="(")
    page.click("#complete")
    error = page.wait_for_selector("#pg-error", state="visible")
    assert "regex" in error.text_content() and "HTTP 422" in error.text_content()
    fill_settings(page, regex="")
    page.click("#complete")
    page.wait_for_selector(".choice-head >> text=finish")
    assert page.is_hidden("#pg-error")


def start_job(page, name: str, budget: int, **advanced) -> None:
    tab(page, "train")
    page.fill("#t-name", name)
    page.fill("#t-max-seconds", str(budget))
    if advanced:
        page.click("label[for=t-mode-advanced]")
        for field, value in advanced.items():
            if field == "cell":
                page.select_option("#t-cell", value)
            else:
                page.fill(f"#t-{field}", str(value))
    page.click("#t-start")


def chart_points(page) -> int:
    return int(page.get_attribute("#chart", "data-points"))


def wait_until(page, predicate, timeout: float = 30.0) -> None:
    """Polls from here: the page's policy forbids the string evaluation wait_for_function uses."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)


TINY = {"cell": "gru", "hidden": 32, "layers": 1, "batch": 8, "seq": 32, "eval": 20}


def test_a_job_can_be_cancelled_from_the_train_tab(page, tmp_path):
    tab(page, "train")
    text = tmp_path / "corpus.txt"
    text.write_text(CORPUS * 5)
    page.click("label[for=t-source-file]")
    page.set_input_files("#t-file", str(text))
    start_job(page, "to-cancel", 120, **TINY)
    page.wait_for_selector("#t-upload-label >> text=uploaded")  # the upload's progress, then its size
    assert page.get_attribute("#t-upload-bar", "value") == "100"
    wait_until(page, lambda: chart_points(page) >= 1)
    page.click("#job-cancel")
    page.wait_for_selector("#job-status >> text=cancelled")
    assert "cancelled" in page.text_content("#job-result-text")
    assert page.is_hidden("#job-activate")
    page.click("label[for=t-source-paste]")


def test_a_tiny_training_job_draws_the_chart_shows_samples_and_succeeds(page):
    tab(page, "train")
    page.fill("#t-text", CORPUS)
    start_job(page, "tiny", 3, **TINY)
    wait_until(page, lambda: chart_points(page) >= 2)
    assert page.locator("#chart canvas").count() >= 1  # uPlot drew it
    page.wait_for_selector("#job-status >> text=succeeded", timeout=60_000)
    assert chart_points(page) >= 2
    assert page.locator("#samples li").count() >= 1
    assert page.text_content("#samples li .sample-step").startswith("step ")
    assert "Saved the model “tiny”" in page.text_content("#job-result-text")
    assert page.is_visible("#job-activate")
    assert re.fullmatch(r"[\d,]+ / [\d,]+", page.text_content("#job-step"))
    assert float(page.text_content("#job-val")) > 0
    assert page.is_hidden("#job-cancel")


def test_models_compare_shows_bits_per_char_for_each_model_and_a_surprisal_map(page):
    tab(page, "models")
    page.wait_for_selector("#models-body tr >> text=tiny")
    rows = page.locator("#models-body tr")
    assert rows.count() == 2
    assert "active" in page.text_content("#models-body tr.is-active")
    page.check("#models-body input[type=checkbox] >> nth=0")
    page.check("#models-body input[type=checkbox] >> nth=1")
    text = "the lazy dog."
    page.fill("#c-text", text)
    page.click("#c-run")
    page.wait_for_selector(".score-card .bpc")
    cards = page.locator(".score-card")
    assert cards.count() == 2
    names = sorted(cards.nth(i).locator("h3").text_content().removesuffix("best") for i in range(2))
    assert names == ["default", "tiny"]
    for i in range(2):
        assert float(cards.nth(i).locator(".bpc").text_content()) > 0
        assert cards.nth(i).locator(".score-map .ch").count() == len(text) - 1  # the first has no context
    assert page.locator(".score-card.is-best").count() == 1
    page.locator(".score-map .ch").nth(2).hover()
    assert "bits" in page.text_content("#tip .tip-title")


def test_screenshots_of_each_tab_at_1280_and_375_pixels_without_sideways_scrolling(page):
    complete(page, "h", max=300, temperature=0.8, seed=7)
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        for name in ("playground", "train", "models"):
            tab(page, name)
            page.wait_for_timeout(150)  # the chart follows the new width
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} at {viewport['width']} px scrolls sideways by {overflow} px"
            screenshot(page, f"{name}-{viewport['width']}")
    page.set_viewport_size(DESKTOP)


def test_model_details_activation_and_deletion_with_confirmation(page, server):
    tab(page, "models")
    page.click("#models-body button[aria-label='Details of tiny']")
    page.wait_for_selector("#model-detail", state="visible")
    assert "tiny" in page.text_content("#model-detail-title")
    assert "gru" in page.text_content("#model-detail-list")
    page.click("#models-body button[aria-label='Activate tiny']")
    page.wait_for_selector("#m-notice >> text=is now the active model")
    page.wait_for_selector("#service-status >> text=tiny")
    assert "tiny" in page.text_content("#models-body tr.is-active")
    page.click("#models-body button[aria-label='Activate default']")
    page.wait_for_selector("#models-body tr.is-active >> text=default")
    # deleting asks first; Cancel keeps the model
    page.click("#models-body button[aria-label='Delete tiny']")
    assert page.is_visible("#confirm-dialog") and "tiny" in page.text_content("#confirm-text")
    page.click("#confirm-no")
    assert page.is_hidden("#confirm-dialog")
    assert httpx.get(server.url + "/models/tiny").status_code == 200
    page.click("#models-body button[aria-label='Delete tiny']")
    page.click("#confirm-yes")
    page.wait_for_selector("#m-notice >> text=Deleted")
    assert page.locator("#models-body tr >> text=tiny").count() == 0
    assert httpx.get(server.url + "/models/tiny").status_code == 404
    assert page.is_disabled("#models-body button[aria-label='Delete default']")  # the active one


def test_text_from_the_model_training_names_and_errors_is_shown_as_text_never_as_html(page):
    # model output (the prefix is part of the text shown)
    shown = complete(page, XSS, max=20, temperature=0)
    assert shown.startswith(XSS)
    assert "not in the vocabulary" in page.text_content("#pg-meta")
    not_pwned(page)

    # training text: a model trained on the markup writes it back, in the samples and the playground
    tab(page, "train")
    page.click("label[for=t-mode-recommended]")
    page.fill("#t-max-seconds", "")
    page.fill("#t-text", XSS + "\n" + XSS)
    page.check("#t-lines")
    page.fill("#t-name", "markup")
    page.click("#t-start")
    page.wait_for_selector("#job-title >> text=markup")  # this job, not the one shown before it
    page.wait_for_selector("#job-status >> text=succeeded", timeout=60_000)
    assert page.text_content("#samples li .sample-text").startswith("<")  # the sample starts at "<"
    not_pwned(page)
    page.click("#job-try")
    page.wait_for_selector("#panel-playground", state="visible")
    assert page.input_value("#pg-model") == "markup"
    written = complete(page, "<", max=40, temperature=0)
    assert "img src" in written
    not_pwned(page)
    fill_settings(page, model="")

    # a model name and an error message with markup in them (which the real service cannot produce)
    fake = {"active": XSS, "models": [{"name": XSS, "active": True, "ok": False, "error": XSS}]}
    page.route("**/models", lambda route: route.fulfill(status=200, json=fake))
    tab(page, "models")
    page.wait_for_selector(f"#models-body .model-name >> text={XSS}")
    assert XSS in page.text_content("#models-body .error-text")
    assert page.locator("#pg-model option").first.text_content() == f"the active model ({XSS})"
    not_pwned(page)
    page.unroute("**/models")
    page.click("#models-refresh")
    page.wait_for_selector("#models-body .model-name >> text=default")

    envelope = {"error": {"type": "invalid_request", "message": f"prefix: {XSS}", "param": "prefix"}}
    page.route("**/complete", lambda route: route.fulfill(status=422, json=envelope))
    tab(page, "playground")
    page.click("#complete")
    page.wait_for_selector("#pg-error", state="visible")
    assert page.text_content("#pg-error") == f"prefix: {XSS} (HTTP 422)"
    not_pwned(page)
    page.unroute("**/complete")

    # and the service's own message about a name it refuses
    tab(page, "train")
    page.uncheck("#t-lines")
    page.fill("#t-name", XSS)
    page.click("#t-start")
    page.wait_for_selector("#t-error", state="visible")
    assert "name" in page.text_content("#t-error") and "HTTP 422" in page.text_content("#t-error")
    not_pwned(page)
