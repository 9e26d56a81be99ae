"""Serve an `rlsys train-rm` reward model (or a HF sequence-classification RM) over HTTP in the
protocol of rlsys's remote reward client (rlsys/rewards/remote.py), so a run can score with an
RM that lives elsewhere: another machine, a GPU box, a shared service.

    python examples/remote_rm/serve_rm.py RM_DIR --port 8000         # listens on 127.0.0.1 only
    rlsys train "reward.components=[{name: 'http://127.0.0.1:8000/score', send_inputs: true}]"

`send_inputs: true` makes the client send each sample's prompt messages and images, which the
RM needs; each item is scored as a group of one. A bearer token is required when the server's
RLSYS_REWARD_TOKEN is set (the client sends its own RLSYS_REWARD_TOKEN, or the entry's token).
An item the model cannot score (no prompt, a sequence over --max-length) gets null: the client
scores it 0 and counts it.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def build_groups(items: list[dict]):
    """One RolloutGroup of one sample per item; None for an item without a prompt."""
    from PIL import Image

    from rlsys.protocol import MediaItem, Prompt, Rollout, RolloutGroup

    groups = []
    for i, item in enumerate(items):
        if not isinstance(item.get("prompt"), list):
            groups.append(None)
            continue
        media = []
        for b64 in item.get("images") or []:
            png = base64.b64decode(b64)
            with Image.open(io.BytesIO(png)) as img:
                media.append(MediaItem(hashlib.sha256(png).hexdigest(), png, img.width, img.height))
        prompt = Prompt(f"remote:{i}", item["prompt"], media, item.get("answer"), item.get("metadata") or {})
        groups.append(RolloutGroup(prompt, [Rollout([], [], str(item.get("response", "")), [], "stop", 0)]))
    return groups


class RMServer:
    """The model and the scoring of one request (one forward batch; calls are serialised)."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 2048):
        from rlsys.rewards.scalar_rm import ScalarRewardModel
        from rlsys.specs import ScalarRMSpec

        self.model = ScalarRewardModel(ScalarRMSpec(model_path=path, batch_size=batch_size, max_length=max_length))
        self.lock = threading.Lock()

    def score(self, items: list[dict]) -> list:
        groups = build_groups(items)
        real = [g for g in groups if g is not None]
        with self.lock:
            scored = iter(self.model.score_groups(real) if real else [])
        out = []
        for g in groups:
            s = None if g is None else next(scored)
            out.append(None if s is None or s.failures else s.scores[0])
        return out


def handler(server: RMServer, token: str | None):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                return self._reply(401, {"error": "bad or missing bearer token"})
            try:
                items = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))["items"]
            except (ValueError, KeyError, TypeError) as err:
                return self._reply(400, {"error": f"bad request: {err}"})
            self._reply(200, {"rewards": server.score(items)})

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # one line per request is noise at RL rates
            pass

    return Handler


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an `rlsys train-rm` output directory or a HF sequence-classification RM")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args(argv)
    server = RMServer(args.model, args.batch_size, args.max_length)
    httpd = ThreadingHTTPServer((args.host, args.port), handler(server, os.environ.get("RLSYS_REWARD_TOKEN")))
    print(f"serving {args.model} on http://{args.host}:{httpd.server_address[1]}/score", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
