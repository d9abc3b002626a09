"""The page at ``/`` in real headless Chromium: a WAV file as the microphone draws the live timeline, and an
uploaded recording draws its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import serve_helpers as helpers
from conftest import optional, unavailable

from emostore.sample.clips import joined_recording, speech_clips

optional("silero_vad", "audio")
playwright = optional("playwright.sync_api", "dev")
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def test_live_and_file_timelines_in_chromium(request, audio_sample_store, tmp_path_factory, tmp_path):
    if not Path(CHROMIUM).exists():
        unavailable("Chromium is not installed (Debian: apt-get install chromium)")
    url, _ = helpers.realtime_server(request, audio_sample_store, tmp_path_factory)
    mic = tmp_path / "mic.wav"  # two utterances, then silence
    spoken = joined_recording(mic, speech_clips()[:2], [1.5, 2.5])
    upload = tmp_path / "upload.wav"
    uploaded = joined_recording(upload, speech_clips()[4:7], [1.2, 1.4, 1.0])
    flags = [*FLAGS, f"--use-file-for-fake-audio-capture={mic}%noloop"]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('mlp')")
            page.click("#start")
            final = "#live-timeline .segment:not(.partial)"
            page.wait_for_function(f"document.querySelectorAll('{final}').length >= {len(spoken)}", timeout=40_000)
            page.wait_for_timeout(1500)  # nothing more is said: no further segment may appear
            page.click("#stop")
            page.wait_for_function("document.getElementById('live-status').textContent.startsWith('done')")
            assert page.text_content("#live-status") == f"done: {len(spoken)} segments"
            assert page.locator(final).count() == len(spoken)
            labels = page.locator(final).evaluate_all("els => els.map(e => e.dataset.label)")
            health = helpers_health(url)
            assert all(label in health["labels"] for label in labels)
            assert page.locator("#latest-probabilities .prob").count() == len(health["labels"])

            page.set_input_files("#file-input", str(upload))
            page.click("#upload button[type=submit]")
            page.wait_for_function("document.getElementById('file-status').textContent.includes('segments')",
                                   timeout=60_000)
            assert page.locator("#file-timeline .segment").count() == len(uploaded)
            assert page.text_content("#file-status").startswith(f"upload.wav: {len(uploaded)} segments")
            assert page.locator("#file-summary tr").count() >= 1
            if os.environ.get("EMOSTORE_SCREENSHOT"):
                page.screenshot(path=os.environ["EMOSTORE_SCREENSHOT"], full_page=True)
            assert not errors, errors
        finally:
            browser.close()


def helpers_health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health").json()
