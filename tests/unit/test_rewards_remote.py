"""HTTP reward client against a real local server on 127.0.0.1."""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlsys.protocol import Prompt, Rollout, RewardResult, RolloutGroup
from rlsys.rewards import RemoteReward, RewardScorer

TOKEN = "s3cret"


class _Handler(BaseHTTPRequestHandler):
    """Routes: /score (reward = 1 if response == answer else 0.5), /auth (needs TOKEN),
    /slow (never answers in time), /flaky (503 twice, then /score), /nulls (null rewards),
    /short (wrong number of rewards), /forbidden (403)."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        server = self.server
        with server.lock:
            server.hits[self.path] = server.hits.get(self.path, 0) + 1
            hits = server.hits[self.path]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.bodies.append(body)
        items = body["items"]
        rewards = [1.0 if it["response"] == it["answer"] else 0.5 for it in items]
        if self.path == "/auth" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"error": "bad token"})
        if self.path == "/slow":
            server.release.wait(5)  # far past the client's timeout; released at teardown
            with server.lock:
                server.answered += 1
            return self._reply(200, {"rewards": rewards})
        if self.path == "/flaky" and hits <= 2:
            return self._reply(503, {"error": "busy"})
        if self.path == "/nulls":
            rewards[0] = None
        if self.path == "/short":
            rewards = rewards[:-1]
        if self.path == "/forbidden":
            return self._reply(403, {"error": "no"})
        self._reply(200, {"rewards": rewards})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout test)
            pass


def _serve(port=0):
    """A real reward server on 127.0.0.1 (port 0: any free port), serving on a thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    httpd.lock, httpd.hits, httpd.bodies, httpd.release = threading.Lock(), {}, [], threading.Event()
    httpd.answered = 0  # /slow requests answered
    httpd.thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    httpd.thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    return httpd


def _stop(httpd):
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()  # the port is closed from here on: connections are refused
    httpd.thread.join(timeout=5)


@pytest.fixture
def server():
    httpd = _serve()
    yield httpd
    _stop(httpd)


def test_success_batched_protocol(server):
    client = RemoteReward(server.base + "/score", timeout_s=5, batch_size=2)
    rewards, failed = client.score_batch(["a", "b", "\udcff"], ["a", None, "x"], [{"k": 1}, {}, {"img": b"x"}])
    assert rewards == [1.0, 0.5, 0.5] and failed == [False] * 3
    assert server.hits["/score"] == 2  # 3 items in chunks of 2
    first = server.bodies[0]["items"][0]
    assert first == {"response": "a", "answer": "a", "metadata": {"k": 1}}
    assert server.bodies[1]["items"][0]["metadata"] == {"img": "<bytes>"}
    assert client("a", "a", {}) == 1.0


def test_bearer_token_from_config_and_env(server, monkeypatch):
    assert RemoteReward(server.base + "/auth", token=TOKEN, timeout_s=5)("a", "a", {}) == 1.0
    monkeypatch.setenv("MY_REWARD_TOKEN", TOKEN)
    assert RemoteReward(server.base + "/auth", token_env="MY_REWARD_TOKEN", timeout_s=5)("a", "a", {}) == 1.0
    wrong = RemoteReward(server.base + "/auth", token="nope", timeout_s=5, retries=3, backoff_s=0.01)
    assert wrong("a", "a", {}) == 0.0 and wrong.failures == 1
    assert wrong.requests == 1  # 401 is not retried
    assert TOKEN not in repr(RemoteReward(server.base, token=TOKEN))


def test_timeout_scores_zero_counted_with_retries(server):
    client = RemoteReward(server.base + "/slow", timeout_s=0.3, retries=1, backoff_s=0.05)
    start = time.monotonic()
    rewards, failed = client.score_batch(["a", "b"], ["a", "b"], [{}, {}])
    elapsed = time.monotonic() - start
    assert rewards == [0.0, 0.0] and len(failed) == 2 and all("timed out" in f for f in failed)
    assert client.failures == 2 and client.requests == 2 and client.retried == 1
    assert server.answered == 0  # both attempts were given up before the server replied
    assert elapsed / (2 * 0.3 + 0.05) < 4  # two timeouts and one backoff, not the server's 5 s


def test_retries_observed_then_success(server):
    client = RemoteReward(server.base + "/flaky", timeout_s=5, retries=2, backoff_s=0.01)
    assert client("a", "a", {}) == 1.0
    assert server.hits["/flaky"] == 3 and client.retried == 2 and client.failures == 0


def test_bad_items_and_bad_replies(server):
    nulls = RemoteReward(server.base + "/nulls", timeout_s=5)
    rewards, failed = nulls.score_batch(["a", "a"], ["a", "a"], [{}, {}])
    assert (rewards, failed) == ([0.0, 1.0], ["null or non-finite reward", False])
    short = RemoteReward(server.base + "/short", timeout_s=5, retries=1, backoff_s=0.01)
    failed = short.score_batch(["a", "a"], ["a", "a"], [{}, {}])[1]
    assert failed == ["malformed reply: expected 2 rewards, got [1.0]"] * 2
    assert server.hits["/short"] == 2  # malformed replies are retried
    refused = RemoteReward("http://127.0.0.1:1/score", timeout_s=1, retries=1, backoff_s=0.01)
    assert refused("a", "a", {}) == 0.0 and refused.failures == 1


def test_remote_as_scorer_component(server):
    prompt = Prompt(uid="t:0", messages=[], answer="<answer>4</answer>")
    group = RolloutGroup(prompt, [Rollout([1], [2], t, [0.0], "stop", 0)
                                  for t in ["<answer>4</answer>", "x"]])
    comps = [("accuracy", 1.0), (server.base + "/score", 2.0, {"name": "rm", "token": TOKEN}),
             (server.base + "/forbidden", 1.0, {"name": "down", "retries": 0})]
    scorer = RewardScorer(comps, timeout_s=5)
    result = scorer.score_group(group)
    assert result.components == {"accuracy": [0.0, 0.0], "rm": [1.0, 0.5], "down": [0.0, 0.0]}
    assert result.rewards == [2.0, 1.0]
    assert result.failures == 2 and scorer.failures == 2 and scorer.stats()["failures/down"] == 2
    assert result.component_failures == {"accuracy": 0, "rm": 0, "down": 2}
    assert result.first_failure == {"down": RewardResult.Failure("HTTP 403 Forbidden (not retried)", "t:0", 0)}


def _closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: a connection is refused at once
    return port


def _logged(caplog):
    """What the reward client logged at INFO and above (DEBUG holds the per-attempt detail)."""
    return [r.getMessage() for r in caplog.records if r.name == "rlsys.rewards" and r.levelno >= logging.INFO]


def test_breaker_opens_on_a_closed_port_and_then_fails_fast(caplog):
    url = f"http://127.0.0.1:{_closed_port()}/score"
    client = RemoteReward(url, timeout_s=5, retries=2, backoff_s=0.01, failure_threshold=3, cooldown_s=600)
    with caplog.at_level(logging.DEBUG, logger="rlsys.rewards"):
        results = [client.score_batch(["a", "b"], ["a", "b"], [{}, {}]) for _ in range(10)]
    assert [rewards for rewards, _ in results] == [[0.0, 0.0]] * 10 and client.failures == 20
    # 3 calls x 3 attempts open the circuit; the 7 calls after it never touch the network.
    assert client.state == "open" and client.requests == 9 and client.retried == 6
    assert all("Connection refused" in f for f in results[0][1])
    assert all(f.startswith("circuit open, not called (last error: ") and "Connection refused" in f
               for _, failed in results[3:] for f in failed)
    [opened] = _logged(caplog)  # one line for the one state change, not one per attempt or call
    assert opened.startswith(f"remote reward {url}: circuit open: 3 consecutive failed calls (last: ")


def test_breaker_half_opens_after_cooldown_and_closes_when_the_server_is_back(caplog):
    httpd = _serve()
    port = httpd.server_address[1]
    client = RemoteReward(f"http://127.0.0.1:{port}/score", timeout_s=5, retries=1, backoff_s=0.01,
                          failure_threshold=2, cooldown_s=1.0)
    try:
        with caplog.at_level(logging.DEBUG, logger="rlsys.rewards"):
            assert client("a", "a", {}) == 1.0 and client.state == "closed"
            _stop(httpd)
            assert [client("a", "a", {}) for _ in range(5)] == [0.0] * 5
            assert client.state == "open" and client.requests == 1 + 2 * 2  # 2 calls, 2 attempts each
            time.sleep(1.2)  # past the cool-down: the next call is the probe, one attempt
            assert client("a", "a", {}) == 0.0 and client.state == "open" and client.requests == 6
            httpd = _serve(port)
            time.sleep(1.2)
            assert client("a", "a", {}) == 1.0 and client.state == "closed" and client.requests == 7
            assert client("a", "a", {}) == 1.0 and client.requests == 8
    finally:
        _stop(httpd)
    states = [m.split(": ")[1] for m in _logged(caplog)]
    assert states == ["circuit open", "circuit half-open", "circuit open", "circuit half-open", "circuit closed"]
    assert client.failures == 6 and httpd.hits == {"/score": 2}
