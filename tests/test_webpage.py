"""The chat page that `edgespool serve` serves at ``/``, in headless Chromium (Debian's chromium + chromedriver,
driven by selenium): a message typed into the page streams a reply from the real server (the page reads the SSE
stream of /v1/chat/completions); the reply shown equals the API's greedy reply to the same message, and the page
shows it growing before it is finished. The screenshot is saved under pytest's tmp folder (its path printed)."""
from __future__ import annotations

import shutil
import time

import pytest

from edgespool import load

from serving_common import Server, smol_bundle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="chromium / chromedriver not installed (apt-get install chromium "
                                       "chromium-driver)")


def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,700"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def test_page_streams_a_reply(tmp_path_factory, tmp_path):
    bundle = smol_bundle(tmp_path_factory)
    question = "Write three sentences about the moon."
    m = load(bundle)
    try:
        want = m.create_chat_completion([{"role": "user", "content": question}], max_tokens=256,
                                        temperature=0)["choices"][0]["message"]["content"]
    finally:
        m.close()
    srv = Server(bundle, "--parallel", "1", log=tmp_path / "serve.log")
    try:
        srv.wait()
        from selenium.webdriver.common.by import By

        d = browser(tmp_path)
        try:
            d.get(srv.url + "/")
            assert d.title == "edgespool chat"
            t0 = time.monotonic()
            while not d.find_element(By.ID, "model").text and time.monotonic() - t0 < 20:
                time.sleep(0.05)
            assert d.find_element(By.ID, "model").text == bundle.name
            temp = d.find_element(By.ID, "temp")  # greedy, to compare with the API's reply
            temp.clear()
            temp.send_keys("0")
            d.find_element(By.ID, "msg").send_keys(question)
            d.find_element(By.ID, "send").click()
            partial: list[str] = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:
                el = d.find_elements(By.CSS_SELECTOR, "#reply-1 .text")
                if el:
                    partial.append(el[0].text)
                    if d.find_element(By.ID, "reply-1").get_attribute("data-finish"):
                        break
                time.sleep(0.05)
            final = d.find_element(By.CSS_SELECTOR, "#reply-1 .text").text
            shot = tmp_path / "chat_page.png"
            d.save_screenshot(str(shot))
            print(f"screenshot: {shot}")
            assert d.find_element(By.ID, "reply-1").get_attribute("data-finish") in ("stop", "length")
            assert " ".join(final.split()) == " ".join(want.split())
            seen = {p for p in partial if p}
            assert any(0 < len(p) < len(final) for p in seen), "the reply never showed a partial state (not streamed)"
            assert "finish:" in d.find_element(By.ID, "stats").text
            assert shot.stat().st_size > 5000
        finally:
            d.quit()
    finally:
        srv.close()
