"""HTTP reward client: score responses with a remote service (a reward model, a sandbox, ...).

Protocol (version 1):

    POST <url>
    Content-Type: application/json
    Authorization: Bearer <token>                  (only when a token is configured)

    {"items": [{"response": str, "answer": str | null, "metadata": {...}}, ...]}

    with send_inputs (a remote reward model needs what the policy saw), each item also has
    "prompt": the prompt's chat messages (image parts {"type": "image"}, in order) and
    "images": the prompt's images, base64 PNG (as resized for the policy), in the same order.

    -> 200, {"rewards": [float | null, ...]}        one entry per item, same order

- Strings are valid UTF-8 (lone surrogates replaced by "?"); metadata values JSON cannot
  encode are sent as "<TypeName>" placeholders.
- A `null` or non-finite reward fails that item only (0, counted).
- Retried with exponential backoff: connection errors, timeouts, HTTP 429 and 5xx, malformed
  bodies. Not retried: other 4xx (a bad request or bad token will not fix itself).
- After the last attempt the whole batch scores 0 and every item counts as a failure; the
  client never raises into the run. `timeout_s` bounds each attempt's connect and each read.
- Items are sent in chunks of at most `batch_size`; one chunk with its retries is one *call*.

Circuit breaker: after `failure_threshold` consecutive failed calls the circuit *opens*: calls
score 0 (counted) at once, without touching the network, for `cooldown_s`; then it is
*half-open* and the next call is a single probe attempt: success closes the circuit, failure
opens it again. A down service thus costs a few calls, not a timeout and retries per batch.
Each state change is logged once (WARNING when opening, INFO otherwise); failed attempts and
calls in between are logged at DEBUG only, so a dead endpoint cannot flood the logs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence

from rlsys.rewards.equivalence import to_text
from rlsys.rewards.registry import register_factory

logger = logging.getLogger("rlsys.rewards")

#: Env var read for the bearer token when neither `token` nor `token_env` is given.
DEFAULT_TOKEN_ENV = "RLSYS_REWARD_TOKEN"


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return f"<{type(obj).__name__}>"  # images, tensors, bytes: not the reward server's business


class RemoteReward:
    """A reward component backed by an HTTP endpoint (see the module docstring for the protocol).

    url:        endpoint, e.g. "http://127.0.0.1:8000/score".
    token:      bearer token; or `token_env`: name of the env var holding it (read per request,
                so a rotated token is picked up). Default env var: RLSYS_REWARD_TOKEN, if set.
    timeout_s:  per-attempt socket timeout.  retries: extra attempts after the first.
    backoff_s:  sleep before retry k is backoff_s * 2**(k-1).
    batch_size: items per request.
    failure_threshold: consecutive failed calls that open the circuit.
    cooldown_s: how long an open circuit fails calls fast before a probe call.
    send_inputs: also send each item's prompt messages and images (see the protocol); the
                scorer then hands `score_batch` the RewardInputs.

    Counters (cumulative): requests (HTTP attempts), retried, failures (items scored 0).
    `state` is "closed", "open" or "half-open".
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        token_env: Optional[str] = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        batch_size: int = 64,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        send_inputs: bool = False,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward url must be http(s)://..., got {url!r}")
        self.url = url
        self._token = token
        self.token_env = token_env
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.batch_size = max(1, int(batch_size))
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_s = max(0.0, float(cooldown_s))
        self.send_inputs = bool(send_inputs)
        self.requests = 0
        self.retried = 0
        self.failures = 0
        self.state = "closed"
        self._failed_calls = 0  # consecutive
        self._opened_at = 0.0
        self._last_error = ""

    def __repr__(self) -> str:  # never print the token
        return f"RemoteReward({self.url!r})"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self._token or os.environ.get(self.token_env or DEFAULT_TOKEN_ENV)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _post_once(self, body: bytes, n: int) -> list[Optional[float]]:
        """One attempt. Returns n rewards (None = bad item); raises on a failed attempt."""
        self.requests += 1
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}") from exc
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:  # refused, reset, timeout
            raise _Retryable(repr(exc)) from exc
        try:
            rewards = json.loads(raw)["rewards"]
            if not isinstance(rewards, list) or len(rewards) != n:
                raise ValueError(f"expected {n} rewards, got {rewards!r:.200}")
        except Exception as exc:
            raise _Retryable(f"malformed reply: {exc}") from exc
        return [self._as_float(r) for r in rewards]

    @staticmethod
    def _as_float(value: Any) -> Optional[float]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    def _score_chunk(self, items: list[dict]) -> tuple[list[float], list]:
        n = len(items)
        try:
            body = json.dumps({"items": items}, default=_json_default).encode("utf-8")
        except Exception as exc:  # e.g. circular metadata: the batch's fault, not the service's
            return [0.0] * n, [f"cannot encode the batch as JSON: {exc}"] * n
        if not self._may_call():
            return [0.0] * n, [f"circuit open, not called (last error: {self._last_error})"] * n
        attempts = 1 if self.state == "half-open" else self.retries + 1
        error = ""
        for attempt in range(attempts):
            if attempt:
                self.retried += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                values = self._post_once(body, n)
            except _Retryable as exc:
                error = str(exc)
                logger.debug("remote reward %s attempt %d failed: %s", self.url, attempt + 1, exc)
                continue
            except Exception as exc:
                error = f"{exc} (not retried)"
                break
            self._call_done(ok=True)
            return [0.0 if v is None else v for v in values], \
                [False if v is not None else "null or non-finite reward" for v in values]
        self._call_done(ok=False, error=error)
        return [0.0] * n, [error] * n

    def _may_call(self) -> bool:
        """False while the circuit is open; after the cool-down it turns half-open (one probe)."""
        if self.state == "open":
            if time.monotonic() - self._opened_at < self.cooldown_s:
                return False
            self._set_state("half-open", f"after {self.cooldown_s:g}s open; probing with one call")
        return True

    def _call_done(self, ok: bool, error: str = "") -> None:
        if ok:
            self._failed_calls = 0
            if self.state != "closed":
                self._set_state("closed", "the probe call succeeded")
            return
        self._failed_calls += 1
        self._last_error = error
        if self.state == "half-open" or self._failed_calls >= self.failure_threshold:
            self._opened_at = time.monotonic()
            why = "the probe call failed" if self.state == "half-open" else \
                f"{self._failed_calls} consecutive failed calls"
            self._set_state("open", f"{why} (last: {error}); scoring 0 without calling for "
                                    f"{self.cooldown_s:g}s")

    def _set_state(self, state: str, why: str) -> None:
        self.state = state
        level = logging.WARNING if state == "open" else logging.INFO
        logger.log(level, "remote reward %s: circuit %s: %s", self.url, state, why)

    @property
    def wants_inputs(self) -> bool:
        """Whether score_batch takes `inputs` (the scorer reads this)."""
        return self.send_inputs

    def score_batch(
        self, responses: Sequence[Any], answers: Sequence[Any], metadatas: Sequence[Any],
        inputs: Optional[Sequence[Any]] = None,
    ) -> tuple[list[float], list]:
        """Score a batch; returns (rewards, failed) with failed[i] False for a good item, else a
        string saying why it scored 0. Never raises. inputs: the items' RewardInputs (prompt
        messages, byte-holding images), sent when `send_inputs`."""
        items = [
            {
                "response": to_text(r),
                "answer": None if a is None else to_text(a),
                "metadata": m if isinstance(m, dict) else {},
            }
            for r, a, m in zip(responses, answers, metadatas)
        ]
        if self.send_inputs and inputs is not None:
            import base64

            images: dict[str, str] = {}  # a group's samples share their images: encode each once
            for item, x in zip(items, inputs):
                item["prompt"] = x.prompt
                item["images"] = [images.setdefault(m.sha256, base64.b64encode(m.png).decode()) for m in x.media]
        rewards: list[float] = []
        failed: list = []
        for start in range(0, len(items), self.batch_size):
            chunk_rewards, chunk_failed = self._score_chunk(items[start : start + self.batch_size])
            rewards.extend(chunk_rewards)
            failed.extend(chunk_failed)
        self.failures += sum(bool(f) for f in failed)
        return rewards, failed

    def __call__(self, response: str, answer: Optional[str] = None, metadata: Optional[dict] = None) -> float:
        """Single-item form of the reward signature (one request per call)."""
        return self.score_batch([response], [answer], [metadata or {}])[0][0]


def _remote_factory(url: str, **options: Any) -> RemoteReward:
    return RemoteReward(url, **options)


register_factory("remote", _remote_factory)
