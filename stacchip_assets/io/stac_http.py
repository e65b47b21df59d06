"""STAC API requests: bounded retries (:class:`RetrySettings`) and what a failed request means
(:func:`explain`). Split out of :mod:`.stac_source`, which re-exports RetrySettings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetrySettings:
    """Retries of STAC API requests: `max_retries` more attempts after the first on connection errors,
    timeouts and the `statuses`; waits of ``backoff_seconds * 2**(n-1)`` (n-th retry), and a server's
    ``Retry-After``, each capped at `max_wait_seconds`."""

    max_retries: int = 3
    backoff_seconds: float = 0.5
    max_wait_seconds: float = 10.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)

    def urllib3_retry(self):
        from urllib3.util.retry import Retry

        cap = float(self.max_wait_seconds)

        class _BoundedRetry(Retry):
            DEFAULT_BACKOFF_MAX = cap

            def get_retry_after(self, response):  # a server's Retry-After, but never longer than the cap
                value = super().get_retry_after(response)
                return None if value is None else min(value, cap)

        n = max(int(self.max_retries), 0)
        return _BoundedRetry(
            total=n, connect=n, read=n, status=n, other=0, redirect=5,
            allowed_methods=frozenset({"GET", "HEAD", "POST"}), status_forcelist=frozenset(self.statuses),
            backoff_factor=float(self.backoff_seconds), backoff_max=cap, respect_retry_after_header=True,
            raise_on_status=False,  # the last answer reaches pystac-client, whose error names the status
        )


def explain(exc: BaseException | str) -> str:
    """The cause of a failed STAC request, with what it means first (unreachable, timed out, HTTP status)."""
    if isinstance(exc, str):
        return exc
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    try:
        import requests
    except ImportError:  # pragma: no cover - pystac-client depends on requests
        return str(exc)
    if any(isinstance(e, requests.Timeout) for e in chain):
        return f"the server did not answer in time ({exc})"
    if any(isinstance(e, requests.ConnectionError) for e in chain):
        return f"the server is not reachable (connection refused or dropped; is it running?): {exc}"
    status = next((getattr(e, "status_code", None) for e in chain if getattr(e, "status_code", None)), None)
    if status:
        return f"the server answered HTTP {status}: {exc}"
    return str(exc)


__all__ = ["RetrySettings", "explain"]
