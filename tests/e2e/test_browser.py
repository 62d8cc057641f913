"""A person's path: open the page in headless Chromium, upload, press Transcribe, read the result.

Debian's chromium driven by Playwright (no browser download). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import media
from asrfleet.audio import AudioLimits, decode_audio

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def upload_and_transcribe(browser, url: str, recording: Path, screenshot: Path, timeout_ms: int = 120_000):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(url, wait_until="networkidle")
        page.locator("input[type=file]").first.set_input_files(str(recording))
        page.get_by_role("button", name="Transcribe").click()
        page.wait_for_function(
            "() => (document.querySelector('#transcript textarea') || {}).value", timeout=timeout_ms
        )
        page.wait_for_timeout(500)  # let the sentences table and downloads render for the screenshot
        text = page.locator("#transcript textarea").input_value()
        page.screenshot(path=str(screenshot), full_page=True)
        return page, text
    except Exception:
        page.screenshot(path=str(screenshot.with_suffix(".failed.png")), full_page=True)
        raise


def test_whisper_page(browser, whisper_instance, artifacts, tmp_path):
    recording = media.write_format(tmp_path, media.speak(media.EN_SENTENCE, voice="en-us"), "mp3", "monday")
    page, text = upload_and_transcribe(
        browser, whisper_instance.url, recording, artifacts / "browser-whisper.png"
    )
    assert text == media.EN_SENTENCE
    links = page.locator("#downloads a")
    assert [links.nth(i).inner_text() for i in range(links.count())] == ["txt", "srt", "vtt", "json"]
    with page.expect_download() as download:  # a person clicks "srt" and gets the subtitles file
        links.nth(1).click()
    assert download.value.suggested_filename == "monday.srt"
    srt = Path(download.value.path()).read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:0") and media.EN_SENTENCE in srt
    page.close()


def test_paraformer_page(browser, paraformer_instance, reference_pipeline, artifacts, tmp_path):
    recording = media.write_format(tmp_path, media.conversation(media.ZH_SENTENCES[:3]), "wav", "meeting")
    page, text = upload_and_transcribe(
        browser, paraformer_instance.url, recording, artifacts / "browser-paraformer.png"
    )
    samples = decode_audio(recording, AudioLimits(2**30, 36000))
    assert text == reference_pipeline.generate(input=samples, batch_size_s=300)[0]["text"]
    page.close()


def test_a_bad_file_shows_an_error_in_the_page(browser, paraformer_instance, artifacts, tmp_path):
    quiet = media.write_audio(tmp_path / "quiet.wav", media.silence(3))
    page = browser.new_page()
    page.goto(paraformer_instance.url, wait_until="networkidle")
    page.locator("input[type=file]").first.set_input_files(str(quiet))
    page.get_by_role("button", name="Transcribe").click()
    page.get_by_text("no speech was found").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts / "browser-error.png"))
    page.close()
