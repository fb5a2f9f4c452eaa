"""The web UI in a real headless Chromium (Debian's, driven by Playwright; never a downloaded browser) against a
live API app with in-process workers, a real Redis and the test model server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings, named_backends
from rsa_service.api.workers import in_process_workers
from rsa_service.settings import Settings
from tests.api.conftest import KEY_A, KEY_B, serve_app
from tests.conftest import RedisServer
from tests.modelserver import ModelServerConfig, ModelServerHandle, serve_in_thread

playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")

CHROMIUM = os.environ.get("RSA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where the tests leave their screenshots (the README shows one of them): regenerated on every run.
SCREENSHOTS = Path(os.environ.get("RSA_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "docs" / "screenshots"))
UI_TIMEOUT_MS = 30_000


@dataclass
class LiveUI:
    url: str
    model: ModelServerHandle

    def api(self, key: str = KEY_A) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture(scope="module")
def slow_model() -> Iterator[ModelServerHandle]:
    """Slow enough that a job's nodes visibly arrive one round at a time."""
    with serve_in_thread(ModelServerConfig(reasoning_words=60, latency_ms=600)) as server:
        yield server


@pytest.fixture
def live_ui(redis_server: RedisServer, namespace: str, slow_model: ModelServerHandle) -> Iterator[LiveUI]:
    shared = named_backends(
        Settings(redis_url=redis_server.url, namespace=namespace, backends={"toy": f"openai:{slow_model.base_url}"})
    )
    settings = ApiSettings(api_keys=[KEY_A, KEY_B], sse_ping_s=0.5)
    app = create_app(settings, shared, background=in_process_workers(1, shared))
    with serve_app(app) as url:
        yield LiveUI(url, slow_model)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: object, key: str | None = KEY_A, width: int = 1280, height: int = 800) -> object:
    """A fresh browser context (its own storage) with `key` already stored, as if entered once before."""
    context = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
    context.set_default_timeout(UI_TIMEOUT_MS)
    if key is not None:
        context.add_init_script(f"localStorage.setItem('rsa.apiKey', {key!r})")
    return context.new_page()


def screenshot(page: object, name: str, **options: object) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), **options)  # type: ignore[attr-defined]
    return path
