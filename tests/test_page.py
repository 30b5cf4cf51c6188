"""The page at ``/`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium),
against a real server started as users start it (``biomed serve``) with a token set: an uploaded DICOM shows the API's
label and probabilities, its header fields, and a heat map whose hottest canvas pixels are where the API's map peaks;
a pasted sequence gets its predictions and importance track; a bad file and a missing token show the API's ``detail``
text. Screenshots go to the test's temporary folder (``BIOMED_SCREENSHOTS`` names another).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

try:
    from tests import live_server
    from tests.tools import require_module, require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server
    from tools import require_module, require_tool

pytestmark = pytest.mark.slow
TOKEN = "page-test-token"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1700")
WAIT_S = 60
DEFAULT_OPACITY = 60  # service/ui/index.html's slider


@pytest.fixture(scope="module")
def server(demo_models: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[live_server.Server]:
    log = tmp_path_factory.mktemp("page-server") / "server.log"
    with live_server.running(log, through_cli=True, BIOMED_API_TOKEN=TOKEN) as s:  # as users start it
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = require_tool("chromium", "apt-get install chromium chromium-driver")
    driver_path = require_tool("chromedriver", "apt-get install chromium-driver")
    require_module("selenium", "pip install selenium (the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.demo.dicom_demo import generate_images

    root = tmp_path_factory.mktemp("page-files")
    images = generate_images(root / "images", n=3, seed=4, classes=("nodule",))
    bad = root / "notes.dcm"
    bad.write_text("this is not an image\n")
    return {"dicom": sorted(images.rglob("*.dcm"))[0], "bad": bad}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("BIOMED_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, server: live_server.Server, token: str = TOKEN) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server.url}/")
    field = browser.find_element(By.ID, "token")
    field.clear()
    if token:
        field.send_keys(token + Keys.TAB)  # input keeps it in memory, change (on leaving the field) reloads the models


def wait_for(browser, condition, what: str):  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT_S).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"{what} did not happen within {WAIT_S} s; page log: {browser_log(browser)}") from None


def shown(browser, element_id: str) -> bool:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).is_displayed()


def text(browser, element_id: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def browser_log(browser) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        return [entry["message"] for entry in browser.get_log("browser")]
    except Exception:  # noqa: BLE001 - a driver without logs
        return []


def canvas_pixels(browser, element_id: str) -> "np.ndarray":  # type: ignore[no-untyped-def]  # noqa: F821
    """The canvas's pixels as the page drew them, (rows, columns, RGBA) uint8, read back through toDataURL (PNG)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    url = browser.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png');")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def set_opacity(browser, percent: int) -> None:  # type: ignore[no-untyped-def]
    browser.execute_script(f"const s = document.getElementById('image-opacity'); s.value = '{percent}';"
                           "s.dispatchEvent(new Event('input'));")


def test_a_dicom_shows_the_apis_label_probabilities_header_and_heat_map(  # type: ignore[no-untyped-def]
        browser, server, files, shots) -> None:
    """The page shows what the API answers for the same file: the label and every probability, and a heat map whose
    hottest pixels on the canvas sit where the API's occlusion map peaks."""
    import httpx
    import numpy as np
    from selenium.webdriver.common.by import By

    answer = httpx.post(f"{server.url}/explain_image", headers={"Authorization": f"Bearer {TOKEN}"},
                        files={"file": (files["dicom"].name, files["dicom"].read_bytes())}, timeout=60).json()
    open_page(browser, server)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#models-list .card"), "the model cards")
    assert "demo-image" in text(browser, "models-list") and "research use only" in text(browser, "models-list")
    browser.find_element(By.ID, "image-file").send_keys(str(files["dicom"]))
    wait_for(browser, lambda d: shown(d, "image-result"), "the image result")
    assert text(browser, "image-predicted") == answer["predicted"]
    shown_probabilities = {row.find_element(By.CSS_SELECTOR, "td").text: float(row.find_elements(By.CSS_SELECTOR,
                           "td")[1].text) for row in browser.find_elements(By.CSS_SELECTOR, "#image-probabilities tbody tr")}
    assert shown_probabilities.keys() == answer["probabilities"].keys()
    for label, p in answer["probabilities"].items():
        assert abs(shown_probabilities[label] - p) < 0.001, (label, shown_probabilities[label], p)
    header = text(browser, "image-header")
    assert "modality" in header and "transfer syntax" in header and "window" in header
    canvas = browser.find_element(By.ID, "image-canvas")
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == (
        answer["presented"]["columns"], answer["presented"]["rows"])  # the presented geometry, not the model's
    # The heat layer, read from the canvas: the grey image (R = G = B) plus the ramp (red > blue) at the map's alpha,
    # so R - B is 0 where the map is 0 and largest where it is hottest.
    set_opacity(browser, 0)
    plain = canvas_pixels(browser, "image-canvas").astype(int)
    assert (plain[..., 0] == plain[..., 2]).all()  # no heat drawn at opacity 0
    set_opacity(browser, 100)
    heat = canvas_pixels(browser, "image-canvas").astype(int)
    warmth = heat[..., 0] - heat[..., 2]
    rows, columns = warmth.shape
    m = answer["map"]
    values = np.asarray(m["values"])
    scale = (m["rows"] / rows, m["columns"] / columns)  # canvas pixel -> model-input pixel of the API's map
    peak = (int((m["peak"]["row"] + 0.5) / scale[0]), int((m["peak"]["column"] + 0.5) / scale[1]))
    assert warmth[peak] >= 0.9 * warmth.max(), (peak, warmth[peak], warmth.max())  # the API's peak is hot here
    hottest = np.unravel_index(int(np.argmax(warmth)), warmth.shape)
    assert values[int(hottest[0] * scale[0]), int(hottest[1] * scale[1])] >= 0.8 * values.max()  # and vice versa
    assert "Demo^Synthetic" not in browser.page_source  # no patient data on the page
    set_opacity(browser, DEFAULT_OPACITY)
    browser.find_element(By.ID, "image").screenshot(str(shots / "page-image.png"))
    browser.save_screenshot(str(shots / "page.png"))
    set_opacity(browser, 25)
    assert canvas.get_attribute("data-opacity") == "25"
    assert not [m for m in browser_log(browser) if "Content Security Policy" in m or "Refused" in m]


def test_a_pasted_sequence_shows_predictions_windows_and_the_importance_track(  # type: ignore[no-untyped-def]
        browser, server, shots) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    short = "ACGTTGCAGGCCTAGGCTAGCTAGGATCGATCGGCTAGCTAGCATCGATCGA"
    long = ("GATTACA" * 50)[:350]
    browser.find_element(By.ID, "dna-text").send_keys(f">short\n{short}\n>long one\n{long}\n")
    browser.find_element(By.ID, "dna-run").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "dna-track").get_attribute("data-positions") == str(len(short)),
             "the importance track")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dna-predictions tr.sequence")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dna-predictions tr.window")) == 3  # 350 bases: 3 windows
    assert float(browser.find_element(By.ID, "dna-track").get_attribute("data-max-importance")) > 0
    browser.find_element(By.CSS_SELECTOR, "#dna-predictions tr.sequence[data-index='1']").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "dna-track").get_attribute("data-positions") == "350",
             "the long sequence's track")
    browser.find_element(By.ID, "dna").screenshot(str(shots / "page-dna.png"))


def test_a_bad_file_shows_the_api_detail(browser, server, files) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    browser.find_element(By.ID, "image-file").send_keys(str(files["bad"]))
    wait_for(browser, lambda d: shown(d, "image-error"), "the error")
    assert "the upload is not a recognised image" in text(browser, "image-error")
    assert not shown(browser, "image-result")


def test_without_the_token_the_page_shows_the_401_detail(browser, server, files) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    open_page(browser, server, token="")
    detail = "send Authorization: Bearer <token> (BIOMED_API_TOKEN)"
    wait_for(browser, lambda d: shown(d, "models-error"), "the models' 401")
    assert text(browser, "models-error") == detail
    browser.find_element(By.ID, "image-file").send_keys(str(files["dicom"]))
    wait_for(browser, lambda d: shown(d, "image-error"), "the upload's 401")
    assert text(browser, "image-error") == detail
    browser.find_element(By.ID, "dna-text").send_keys("ACGTACGT")
    browser.find_element(By.ID, "dna-run").click()
    wait_for(browser, lambda d: shown(d, "dna-error"), "the DNA 401")
    assert text(browser, "dna-error") == detail


def test_the_page_cannot_be_framed_by_another_site(browser, server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A page elsewhere that frames ours: Chromium refuses the frame (CSP frame-ancestors 'none'); the page's own
    policy also says base-uri, object-src and form-action."""
    import http.server
    import threading
    import urllib.parse

    import httpx

    (tmp_path / "frame.html").write_text(f'<html><body><iframe id="f" src="{server.url}/"></iframe></body></html>')
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **kw)  # noqa: E731
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another origin (another port)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        browser.get_log("browser")  # drop what earlier tests logged
        browser.get(f"http://127.0.0.1:{other.server_address[1]}/frame.html")
        deadline = time.monotonic() + WAIT_S
        refused = []
        while not refused and time.monotonic() < deadline:
            refused = [e["message"] for e in browser.get_log("browser") if "frame-ancestors" in e["message"]]
            time.sleep(0.2)
        assert refused and urllib.parse.urlsplit(server.url).netloc in refused[0], refused
    finally:
        other.shutdown()
    csp = httpx.get(f"{server.url}/").headers["content-security-policy"]
    assert csp == ("default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; "
                   "form-action 'self'")
