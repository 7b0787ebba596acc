"""The page at / in real headless Chromium (Debian's chromium package, driven by Playwright's Python API)
against a real server: what it shows is what the API answers, errors land next to their fields, a busy
or absent server is retried and said plainly, model output stays text, and /docs and /redoc work offline.

Chromium comes from apt-get where it is missing (as the container test installs podman); without root or
apt-get these tests are skipped, saying so. One browser serves the whole module. NAMEGEN_SCREENSHOT=PATH
also writes the screenshot the README shows (docs/playground.png) to PATH.
"""
from __future__ import annotations

import csv
import io
import os
import re
import contextlib
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import ROOT, ServerProcess, apt_install

CHROMIUM = "/usr/bin/chromium"
STATIC = ROOT / "serving" / "static"
WAIT_MS = 20_000  # two busy cores: a generation, a score or a page load can take a few seconds
# A list whose names hold markup and quotes: a model trained on it generates more of the same.
MARKUP_NAMES = [f"<b>{n}</b>" for n in ("ana", "bo", "cy", "dee")] + [f"{n}&co" for n in ("eve", "flo", "gus")] \
    + [f'{n}"s' for n in ("hal", "ida", "jo")] + [f"{n}'s" for n in ("kim", "lu", "mo")] \
    + ['<img src=x onerror="pwned=1">', "&lt;i&gt;", "a&amp;b"]
INJECTION = '<img src=x onerror="pwned=1">'
ELSEWHERE = re.compile(r"""(src|href)=["']?(https?:)?//|url\(["']?(https?:)?//|@import|fetch\(["'`]https?:""")


# -- a browser, a server with three models ---------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, from apt-get where missing."""
    if not Path(CHROMIUM).exists():
        apt_install(["chromium"], [CHROMIUM])
    return CHROMIUM


@pytest.fixture(scope="module")
def markup_registry(tmp_path_factory, served_registry, conditional_checkpoint) -> Path:
    """The tiny mlp and bigram-counts, "markup": bigram counts of names holding <b>, &, quotes, and the tiny
    mlp-conditional (sex, decade)."""
    from export.pipeline import export_checkpoint
    from training.data import Dataset, load_names_file
    from training.models import ModelConfig
    from training.train import TRAIN_DEFAULTS, train

    root = tmp_path_factory.mktemp("page")
    names_file = root / "markup.txt"
    names_file.write_text("\n".join(MARKUP_NAMES) + "\n")
    data = Dataset.from_words(load_names_file(names_file), str(names_file))
    train(ModelConfig("bigram-counts", data.vocab.size), TRAIN_DEFAULTS["bigram-counts"], data, root / "markup",
          progress=False)
    registry = shutil.copytree(served_registry, root / "registry", symlinks=True)
    export_checkpoint(root / "markup", registry, name="markup")
    export_checkpoint(conditional_checkpoint, registry, name="mlp-conditional")
    return registry


@pytest.fixture(scope="module")
def server(markup_registry):
    """A real server with the tiny mlp (the default), bigram-counts and markup; its URL."""
    process = ServerProcess(markup_registry)
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--disable-dev-shm-usage"])
        yield browser
        browser.close()


class Page:
    """A fresh browser context on the server, with what its console and script errors said."""

    def __init__(self, browser, url: str, **options):
        self.context = browser.new_context(base_url=url, **options)
        self.context.set_default_timeout(WAIT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.context.close()

    def open(self, path: str = "/"):
        response = self.page.goto(path)
        self.page.locator("#model option").first.wait_for(state="attached")  # /v1/models answered
        return response

    def names(self) -> list[str]:
        return self.page.locator("#names .name-text").all_text_contents()

    def query(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(urlsplit(self.page.url).query).items()}


@pytest.fixture
def browse(browser, server):
    """Opens fresh browser contexts on the server (options as Browser.new_context's); all closed afterwards."""
    with contextlib.ExitStack() as opened:
        yield lambda **options: opened.enter_context(Page(browser, server, **options))


def api_names(api, **body) -> list[str]:
    response = api.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return [entry["name"] for entry in response.json()["names"]]


def shown_when_done(tab: Page, count: int) -> list[str]:
    from playwright.sync_api import expect

    expect(tab.page.locator("#names li")).to_have_count(count)
    return tab.names()


# -- the page, its files, its headers --------------------------------------------------------------------
def test_page_and_its_files_are_small_offline_and_carry_csp_and_nosniff(api):
    files = [path for path in STATIC.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 100_000
    for path in ["/", *(f"/static/{p.relative_to(STATIC).as_posix()}" for p in files)]:
        response = api.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe" not in csp and "connect-src 'self'" in csp, (path, csp)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not ELSEWHERE.search(response.text), f"{path} loads something from another origin"
        assert "admin" not in response.text.lower(), f"{path} mentions the admin API"
    html = api.get("/").text
    assert "<script>" not in html and not re.search(r"\son\w+=", html) and "style=" not in html
    documented = api.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc"} & set(documented) and not any(p.startswith("/static") for p in documented)


def test_page_loads_with_no_console_error_listing_models_with_type_and_val_nll(browse, api):
    tab = browse()
    response = tab.open()
    assert "unsafe" not in response.headers["content-security-policy"]
    listed = api.get("/v1/models").json()
    options = tab.page.locator("#model option").all_text_contents()
    assert options == [f"{m['name']} ({m['type']}, val NLL {m['metrics']['val_nll']:.3f})" for m in listed["models"]]
    assert tab.page.locator("#model").input_value() == listed["default"]
    assert tab.page.locator("#results").is_hidden()
    assert tab.errors == []


# -- requests in the URL ---------------------------------------------------------------------------------
@pytest.mark.parametrize("query, body", [
    ("model=mlp&n=10&seed=42&prefix=ka&temperature=0.8", dict(model="mlp", n=10, seed=42, prefix="ka", temperature=0.8)),
    # past 2**53 a JavaScript number would round the seed: the page keeps its digits
    ("n=6&seed=9007199254740993&top_k=5&unique=true", dict(n=6, seed=9007199254740993, top_k=5, unique=True)),
    ("model=bigram-counts&n=4&seed=3&min_length=4&max_length=6&exclude_training=true",
     dict(model="bigram-counts", n=4, seed=3, min_length=4, max_length=6, exclude_training=True)),
])
def test_a_seeded_url_shows_exactly_the_apis_names_for_that_request(browse, api, query, body):
    expected = api_names(api, **body)
    tab = browse()
    tab.open(f"/?{query}")
    assert shown_when_done(tab, len(expected)) == expected
    assert tab.page.locator("#seed-used").text_content() == str(body["seed"])
    assert tab.page.locator("#seed").input_value() == str(body["seed"])
    assert tab.errors == []


def test_changing_a_control_and_generating_changes_the_url_and_the_names(browse, api):
    tab = browse()
    tab.open("/?n=5&seed=7")
    before = shown_when_done(tab, 5)
    tab.page.fill("#prefix", "ma")
    tab.page.locator("#temperature-slider").fill("0.5")
    tab.page.click("#generate")
    tab.page.wait_for_url("**prefix=ma**")
    assert tab.query() == {"model": "mlp", "n": "5", "seed": "7", "prefix": "ma", "temperature": "0.5"}
    tab.page.wait_for_function("() => [...document.querySelectorAll('#names .name-text')]"
                               ".every((name) => name.textContent.startsWith('ma'))")
    after = tab.names()
    assert after == api_names(api, model="mlp", n=5, seed=7, prefix="ma", temperature=0.5) and after != before
    tab.page.go_back()  # the previous request comes back with its names
    tab.page.wait_for_function("() => !document.querySelector('#names .name-text').textContent.startsWith('ma')")
    assert tab.names() == before and tab.page.locator("#prefix").input_value() == ""


def click_and_wait(tab: Page, selector: str) -> tuple[str, list[str]]:
    """Click a button that generates; the seed and names shown once the answer is in."""
    from playwright.sync_api import expect

    tab.page.click(selector)  # its handler says "Generating…" before it awaits anything
    expect(tab.page.locator("#status")).to_have_text(re.compile(r"^\d+ names\.$"))
    return tab.page.locator("#seed-used").text_content(), tab.names()


def test_again_repeats_the_seed_new_draws_another_and_the_url_keeps_it(browse):
    tab = browse()
    tab.open("/?n=8")
    first = shown_when_done(tab, 8)
    seed = tab.page.locator("#seed-used").text_content()
    assert seed.isdigit() and tab.query()["seed"] == seed  # the link reproduces what was shown
    assert click_and_wait(tab, "#again") == (seed, first)
    other_seed, others = click_and_wait(tab, "#new-seed")
    assert other_seed != seed and others != first and tab.query()["seed"] == other_seed
    tab.page.goto(f"/?n=8&seed={seed}")
    assert shown_when_done(tab, 8) == first


# -- errors ----------------------------------------------------------------------------------------------
def test_a_bad_prefix_shows_the_servers_message_next_to_the_prefix_field(browse, api):
    from playwright.sync_api import expect

    tab = browse()
    tab.open()
    tab.page.fill("#prefix", "ka9")
    tab.page.click("#generate")
    server_says = [e["msg"] for e in api.post("/v1/generate", json={"model": "mlp", "prefix": "ka9"}).json()["detail"]
                   if e["loc"] == ["body", "prefix"]]
    expect(tab.page.locator("#prefix-error")).to_have_text(server_says[0])
    assert tab.page.locator("#prefix").get_attribute("aria-invalid") == "true"
    assert tab.page.locator("#n-error").text_content() == ""
    tab.page.fill("#prefix", "ka")  # fixed: the message goes
    tab.page.click("#generate")
    expect(tab.page.locator("#prefix-error")).to_be_empty()


def test_a_bad_value_in_the_url_is_the_servers_422_next_to_its_field(browse, api):
    from playwright.sync_api import expect

    tab = browse()
    tab.open("/?n=many&seed=-1")
    details = api.post("/v1/generate", content=b'{"n":"many","seed":-1}',
                       headers={"content-type": "application/json"}).json()["detail"]
    expect(tab.page.locator("#n-error")).to_have_text(next(e["msg"] for e in details if e["loc"] == ["body", "n"]))
    expect(tab.page.locator("#seed-error")).to_have_text(next(e["msg"] for e in details if e["loc"] == ["body", "seed"]))


def test_a_busy_server_is_retried_with_the_sdks_backoff_then_answers(browse, api):
    tab = browse()
    tab.open()
    answered = []

    def busy_twice(route):
        answered.append(route.request.post_data)
        if len(answered) <= 2:
            route.fulfill(status=503 if len(answered) == 1 else 429, headers={"retry-after": "0"},
                          json={"detail": "too many requests waiting; retry shortly"})
        else:
            route.continue_()

    tab.page.route("**/v1/generate", busy_twice)
    tab.page.fill("#seed", "5")
    tab.page.click("#generate")
    assert shown_when_done(tab, 10) == api_names(api, model="mlp", seed=5)
    assert len(answered) == 3 and len(set(answered)) == 1  # the same request, sent again


@pytest.mark.parametrize("failure, words", [
    ("busy", "The server is busy (HTTP 429) and still was after 4 tries: too many requests waiting"),
    ("gone", "Cannot reach the server at http://127.0.0.1:"),
])
def test_a_server_still_busy_or_unreachable_after_the_retries_is_said_plainly(browse, failure, words):
    from playwright.sync_api import expect

    tab = browse()
    tab.open()
    tries = []

    def fail(route):
        tries.append(1)
        if failure == "busy":
            route.fulfill(status=429, headers={"retry-after": "0"}, json={"detail": "too many requests waiting"})
        else:
            route.abort("connectionrefused")

    tab.page.route("**/v1/generate", fail)
    tab.page.click("#generate")
    expect(tab.page.locator("#status")).to_contain_text(words)
    assert len(tries) == 4  # clients/retry.py RetryPolicy.max_attempts


# -- the chart and the score box -------------------------------------------------------------------------
def chart(tab: Page) -> list[tuple[str, float]]:
    columns = tab.page.locator("#chart .column")
    return [(c.get_attribute("data-char"), float(c.get_attribute("data-p"))) for c in columns.all()]


def test_clicking_a_name_draws_the_same_probabilities_as_score(browse, api):
    from playwright.sync_api import expect

    tab = browse(viewport={"width": 1100, "height": 900})
    tab.open("/?model=mlp&n=12&seed=2026&temperature=0.9")
    name = shown_when_done(tab, 12)[3]
    tab.page.locator("#names button.name").nth(3).click()
    expect(tab.page.locator("#chart-title q")).to_have_text(name)
    scored = api.post("/v1/score", json={"names": [name], "model": "mlp"}).json()["results"][0]["chars"]
    assert chart(tab) == [(c["char"], c["p"]) for c in scored]
    screenshot = tab.page.screenshot(full_page=True)
    assert 10_000 < len(screenshot) < 300_000
    if os.environ.get("NAMEGEN_SCREENSHOT"):
        Path(os.environ["NAMEGEN_SCREENSHOT"]).write_bytes(screenshot)
    tab.page.fill("#score-name", "emma")
    tab.page.press("#score-name", "Enter")
    expect(tab.page.locator("#chart-title q")).to_have_text("emma")
    scored = api.post("/v1/score", json={"names": ["emma"], "model": "mlp"}).json()["results"][0]["chars"]
    assert chart(tab) == [(c["char"], c["p"]) for c in scored]


# -- model output is text --------------------------------------------------------------------------------
def test_names_with_markup_and_quotes_are_shown_literally_and_run_no_script(browse, api, tmp_path):
    from playwright.sync_api import expect

    tab = browse(accept_downloads=True)
    tab.open("/?model=markup&n=40&seed=1")
    shown = shown_when_done(tab, 40)
    assert shown == api_names(api, model="markup", n=40, seed=1)
    assert all(any(ch in "".join(shown) for ch in mark) for mark in ("<>", "&", '"', "'"))
    tab.page.fill("#score-name", INJECTION)
    tab.page.press("#score-name", "Enter")
    expect(tab.page.locator("#chart-title q")).to_have_text(INJECTION)
    assert tab.page.locator("main b, main i, main img, main script").count() == 0
    assert tab.page.evaluate("() => typeof window.pwned") == "undefined"
    with tab.page.expect_download() as download:
        tab.page.click("#download")
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["name", "nll"] and [row[0] for row in rows[1:]] == shown
    assert tab.errors == []


# -- conditional models ----------------------------------------------------------------------------------
def test_sex_and_decade_offer_the_models_values_and_give_the_apis_names(browse, api):
    from playwright.sync_api import expect

    expected = api_names(api, model="mlp-conditional", n=6, seed=11, sex="F", decade=2010)
    tab = browse()
    tab.open("/?model=mlp-conditional&n=6&seed=11&sex=F&decade=2010")
    assert shown_when_done(tab, 6) == expected
    assert tab.page.locator("#decade option").all_text_contents() == ["any", "1920", "2010"]
    assert tab.page.locator("#sex").input_value() == "F" and tab.page.locator("#decade").input_value() == "2010"
    tab.page.fill("#score-name", "emma")
    tab.page.click("#score")
    explained = api.post("/v1/score", json={"names": ["emma"], "model": "mlp-conditional", "explain": True}).json()
    expect(tab.page.locator("#status")).to_contain_text(f"emma sounds {explained['results'][0]['most_likely']['sex']}")
    tab.page.select_option("#model", "mlp")  # no conditions: nothing to choose
    assert tab.page.locator("#sex").is_disabled() and tab.page.locator("#decade").input_value() == ""
    assert tab.errors == []


def test_guidance_in_the_url_gives_the_apis_names_shows_the_default_and_is_off_without_conditions(browse, api):
    from playwright.sync_api import expect

    body = dict(model="mlp-conditional", n=6, seed=11, sex="F")
    expected = api_names(api, **body, guidance=0)
    assert expected != api_names(api, **body)  # guidance 0 is not the default: the page must send it
    listed = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    tab = browse()
    tab.open("/?model=mlp-conditional&n=6&seed=11&sex=F&guidance=0")
    assert shown_when_done(tab, 6) == expected and tab.query()["guidance"] == "0"
    guidance = tab.page.locator("#guidance")
    assert guidance.get_attribute("placeholder") == f"{listed['mlp-conditional']['guidance']:g}"  # "3"
    assert guidance.is_enabled() and guidance.input_value() == "0"
    tab.page.select_option("#model", "mlp")  # no conditions: nothing to guide, and nothing sent
    assert guidance.is_disabled() and guidance.input_value() == ""
    assert click_and_wait(tab, "#generate") == ("11", api_names(api, model="mlp", n=6, seed=11))
    assert tab.query() == {"model": "mlp", "n": "6", "seed": "11"} and tab.errors == []
    tab.page.goto("/?model=mlp-conditional&n=3&guidance=21")  # a bad value: the server's 422, under the field
    details = api.post("/v1/generate", json={"model": "mlp-conditional", "n": 3, "guidance": 21}).json()["detail"]
    expect(tab.page.locator("#guidance-error")).to_have_text(
        next(e["msg"] for e in details if e["loc"] == ["body", "guidance"]))
    assert guidance.get_attribute("aria-invalid") == "true"


def test_a_value_the_model_lacks_is_refused_next_to_its_field(browse):
    from playwright.sync_api import expect

    tab = browse()
    tab.open("/?model=mlp-conditional&n=3&decade=1955")
    expect(tab.page.locator("#decade-error")).to_contain_text("1920, 2010")


# -- keyboard, labels, phone width -----------------------------------------------------------------------
def test_keyboard_alone_reaches_generate_and_every_control_is_labelled(browse):
    tab = browse()
    tab.open()
    unlabelled = tab.page.evaluate("() => [...document.querySelectorAll('input, select, button')]"
                                   ".filter((c) => !(c.labels?.length || c.getAttribute('aria-label') || c.textContent.trim()))"
                                   ".map((c) => c.id)")
    assert unlabelled == []
    for _ in range(30):
        tab.page.keyboard.press("Tab")
        if tab.page.evaluate("() => document.activeElement.id") == "generate":
            break
    else:
        pytest.fail("30 presses of Tab never reached the generate button")
    tab.page.keyboard.press("Enter")
    shown_when_done(tab, 10)
    tab.page.keyboard.press("Tab")  # on to the results: a name is a button too
    for _ in range(5):
        if tab.page.evaluate("() => document.activeElement.classList.contains('name')"):
            break
        tab.page.keyboard.press("Tab")
    tab.page.keyboard.press("Enter")
    tab.page.locator("#chart .column").first.wait_for()


def test_the_page_fits_a_phone_width_screen(browse):
    tab = browse(viewport={"width": 360, "height": 740}, is_mobile=True)
    tab.open("/?n=10&seed=1")
    shown_when_done(tab, 10)
    assert tab.page.evaluate("() => document.documentElement.scrollWidth") <= 360


# -- the API docs, offline -------------------------------------------------------------------------------
@pytest.mark.parametrize("path, operation", [("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")])
def test_docs_render_their_operations_with_only_this_machine_reachable(browse, api, path, operation):
    from playwright.sync_api import expect

    tab = browse()
    elsewhere = []

    def only_here(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    tab.context.route("**/*", only_here)
    tab.page.goto(path)
    operations = len([op for methods in api.get("/openapi.json").json()["paths"].values() for op in methods])
    expect(tab.page.locator(operation)).to_have_count(operations)
    assert tab.page.locator("a[href='/']").count() >= 1  # back to the page
    # ReDoc always shows Redocly's logo from its CDN; the docs' CSP refuses it (ReDoc then hides it) and
    # says so on the console: that refusal is the one message allowed.
    assert elsewhere == [] and [e for e in tab.errors if "https://cdn.redoc.ly/redoc/logo-mini.svg" not in e] == []
