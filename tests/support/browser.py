"""Headless Chromium (Debian's, driven by Playwright) for the tests that run real pages: the jam page, FastRTC's
snippets."""

import contextlib
import shutil
import typing as tp
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns", "--allow-loopback-in-peer-connection"]
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # getUserMedia: a test tone


@contextlib.contextmanager
def chromium_page(profile: Path, extra_flags: tp.Sequence[str] = ()) -> tp.Iterator[tp.Any]:
    """A page of a headless Chromium whose profile lives in `profile`, closed when the block ends."""
    if not shutil.which(CHROMIUM):
        raise AssertionError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=[*FLAGS, *extra_flags],
            viewport={"width": 960, "height": 900})
        try:
            yield browser.new_page()
        finally:
            browser.close()
