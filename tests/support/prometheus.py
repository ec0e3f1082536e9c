"""Scrape a real ``/metrics`` endpoint and look samples up by name and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Scrape(dict):
    """``{(sample name, frozenset of label items): value}`` of one scrape."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, frozenset(labels.items())))

    def get_or_zero(self, name: str, **labels: str) -> float:
        return self.value(name, **labels) or 0.0


def scrape(url: str, timeout: float = 5.0) -> Scrape | None:
    """The parsed samples, or None while the endpoint does not answer."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    out = Scrape()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out
