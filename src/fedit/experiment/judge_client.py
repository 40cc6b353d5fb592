"""The judge's connection: the maintained ``openai`` client (any OpenAI-compatible
``/chat/completions`` endpoint) with ``tenacity`` retries.

What is retried and what is not (issue 7, item 17):

- HTTP 408, 429, every 5xx and network errors (refused connection, timeout) are transient:
  retried ``--judge-retries`` times with exponential backoff, or after the server's own
  ``Retry-After`` / ``retry-after-ms`` when it sends one. A verdict that still fails is a
  :class:`TransportFailure`, which the judge counts (and stops after a few in a row).
- Every other 4xx is the caller's mistake and will not heal by waiting: a :class:`JudgeError`
  with the server's own message on one line, naming the flag most likely to fix it.
- A server that rejects ``max_tokens`` (OpenAI's newer models want ``max_completion_tokens``)
  is asked again at once with ``max_completion_tokens``, and keeps getting that from then on.
- A reply that is not JSON (an HTML login or error page: ``--judge-url`` names a web page, not the
  API's base URL) is a :class:`JudgeError` that says so, not an unparsable verdict.

:meth:`ChatClient.check` asks the endpoint for its models (``GET /models``) before anything is
trained: an unreachable endpoint, a refused key or a model it does not serve stops at once.

The API key is read from ``--judge-key-env`` only (never from ``OPENAI_API_KEY`` behind the
user's back: it would be sent to whatever ``--judge-url`` names); without one, no
``Authorization`` header is sent.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from typing import Any, Callable

from fedit.errors import ConfigError
from fedit.experiment.settings import JudgeSettings

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 600.0      # a Retry-After longer than this is capped (and logged)
RETRYABLE_STATUS = (408, 429)  # plus every 5xx


class JudgeError(ConfigError):
    """The judge cannot work with this endpoint (a 4xx other than 408/429, or it stays unreachable)."""


class TransportFailure(Exception):
    """A request that still failed after every retry (network, timeout, 408, 429, 5xx)."""


def server_message(exc: Any) -> str:
    """The server's own error text on one line (OpenAI's ``error.message``, FastAPI's ``detail``, or
    the raw body), at most 300 characters."""
    body = getattr(exc, "body", None)
    text = None
    if isinstance(body, dict):
        text = body.get("message") or body.get("detail") or body.get("error")
    elif body:
        text = body
    if not text:
        response = getattr(exc, "response", None)
        text = getattr(response, "text", "") or str(exc)
    return " ".join(str(text).split())[:300]


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``Retry-After`` in seconds or as an
    HTTP date), or None."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):     # includes APITimeoutError
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, openai.APIStatusError) and (status in RETRYABLE_STATUS or status >= 500)


def _rejects_max_tokens(exc: BaseException) -> bool:
    import openai

    if not isinstance(exc, openai.BadRequestError):
        return False
    message = server_message(exc)
    return getattr(exc, "param", None) == "max_tokens" or (
        "max_tokens" in message and "max_completion_tokens" in message)


def not_json(endpoint: str, text: str) -> JudgeError:
    """The error for a reply that is text, not JSON: an HTML page (its title) or other text."""
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    html = text.lstrip().startswith("<")
    what = "an HTML page" if html else "text that is not JSON"
    shown = " ".join((title.group(1) if title else text).split())[:80]
    return JudgeError(f"--judge-url: the judge endpoint {endpoint} answered with {what}, not JSON "
                      f"({'title ' if title else ''}{shown!r}); --judge-url must be the API's base URL, "
                      "e.g. https://api.openai.com/v1")


def _flag_for(status: int, param: str | None, message: str) -> str:
    text = f"{param or ''} {message}".lower()
    if status in (401, 403):
        return "--judge-key-env"
    if "temperature" in text:
        return "--judge-temperature"
    if "max_tokens" in text or "max_completion_tokens" in text:
        return "--judge-max-tokens"
    if status == 404 and "model" not in text:
        return "--judge-url"
    return "--judge-model" if "model" in text else "--judge-url"


class ChatClient:
    """``complete(messages) -> str`` against the judge endpoint (see the module docstring)."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        base = settings.url.rstrip("/")
        base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        self.settings, self.sleep, self.endpoint = settings, sleep, base + "/chat/completions"
        key = settings.api_key()
        self.headers = {} if key else {"Authorization": openai.omit}
        self.client = openai.OpenAI(base_url=base, api_key=key or "unused", max_retries=0,
                                    timeout=settings.timeout_s)
        self.token_param = "max_tokens"

    def _wait(self, state) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after(exc) if exc is not None else None
        if asked is not None:
            if asked > MAX_RETRY_AFTER_S:
                logger.warning("judge: the server asked to wait %.0f s; waiting %.0f s", asked, MAX_RETRY_AFTER_S)
            return min(asked, MAX_RETRY_AFTER_S)
        return self.settings.backoff_s * 2 ** (state.attempt_number - 1)

    def _create(self, messages: list[dict[str, str]]):
        import openai

        s = self.settings
        try:
            return self.client.chat.completions.create(
                model=s.model, messages=messages, temperature=s.temperature,
                extra_headers=self.headers, **{self.token_param: s.max_tokens})
        except openai.BadRequestError as exc:
            if self.token_param == "max_tokens" and _rejects_max_tokens(exc):
                logger.info("judge: the endpoint rejects max_tokens; sending max_completion_tokens instead")
                self.token_param = "max_completion_tokens"
                return self._create(messages)
            raise

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The judge's reply text; TransportFailure after the retries; JudgeError on a fatal 4xx."""
        import openai
        import tenacity

        retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_retryable), wait=self._wait,
                                     stop=tenacity.stop_after_attempt(self.settings.retries + 1),
                                     sleep=self.sleep, reraise=True)
        try:
            response = retrying(self._create, messages)
        except openai.APIStatusError as exc:
            message = server_message(exc)
            if _retryable(exc):
                raise TransportFailure(f"HTTP {exc.status_code}: {message}") from None
            raise JudgeError(f"{_flag_for(exc.status_code, exc.param, message)}: the judge endpoint "
                             f"{self.endpoint} answered HTTP {exc.status_code}: {message}") from None
        except openai.APIConnectionError as exc:
            raise TransportFailure(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
        if isinstance(response, str):   # the openai client hands back a body that is not JSON as text
            raise not_json(self.endpoint, response)
        try:
            return response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            return ""

    def check(self) -> None:
        """Before training: the endpoint answers ``GET /models`` with JSON and serves the model.
        An endpoint without a model list (404/405/501) is only known to be reachable (logged)."""
        import openai

        s, url = self.settings, self.endpoint.removesuffix("/chat/completions") + "/models"
        try:
            listed = self.client.get("/models", cast_to=object, options={"headers": self.headers})
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405, 501):
                logger.info("judge: %s lists no models (HTTP %d); the model name is checked at the first "
                            "verdict", url, exc.status_code)
                return
            message = server_message(exc)
            raise JudgeError(f"{_flag_for(exc.status_code, None, message)}: the judge endpoint {url} answered "
                             f"HTTP {exc.status_code}: {message}") from None
        except openai.APIConnectionError as exc:
            raise JudgeError(f"--judge-url: cannot reach the judge endpoint {url} "
                             f"({' '.join(str(exc).split())[:200]})") from None
        if isinstance(listed, str):
            raise not_json(url, listed)
        ids = [m.get("id") for m in (listed.get("data") or []) if isinstance(m, dict)] \
            if isinstance(listed, dict) else []
        if ids and s.model not in ids:
            shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            raise JudgeError(f"--judge-model: {s.model} is not a model of the judge endpoint {url} (it serves "
                             f"{shown})")
        logger.info("judge: %s serves %s", url, s.model if ids else "an unlisted model list")
