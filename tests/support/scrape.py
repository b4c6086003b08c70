"""Scraping a /metrics endpoint until it shows something."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable

from promscrape import Scrape, scrape

WAIT_S = 90.0


def scrape_until(url: str, what: str, check: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until the endpoint answers and `check` holds."""
    deadline = time.monotonic() + WAIT_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = scrape(url)
        except (urllib.error.URLError, ConnectionError) as err:
            last = err
        else:
            if check(got):
                return got
            last = got.samples
        time.sleep(0.1)
    raise AssertionError(f"{url} never showed {what}; last: {last}")
