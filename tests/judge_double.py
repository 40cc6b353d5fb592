"""A test double of an OpenAI-compatible chat-completions endpoint, for the judge tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What OpenAI answers when a newer model is sent max_tokens (its error object, abridged).
MAX_TOKENS_REJECTION = {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                   "Use 'max_completion_tokens' instead.",
                        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}


class ScriptedJudgeServer:
    """A TEST DOUBLE of an OpenAI-compatible ``POST /v1/chat/completions`` endpoint on 127.0.0.1
    (port 0, in a thread). It answers with the scripted replies in order, each ``(status, content)``
    or ``(status, content, headers)`` (e.g. ``{"Retry-After": "7"}``); an error status sends
    OpenAI's error object with ``content`` as its message. With ``reject_max_tokens`` every request
    that carries ``max_tokens`` gets OpenAI's 400 for newer models (not taken from the script).
    A reply whose headers set a Content-Type other than JSON sends ``content`` as the raw body (an
    HTML page). ``GET /v1/models`` lists ``models`` (OpenAI's list object), or is a 404 when None.
    It records every POST's body and Authorization header (``requests``) and every GET's path
    (``gets``); it is not a model."""

    def __init__(self, script: list[tuple], reject_max_tokens: bool = False,
                 models: list[str] | None = None) -> None:
        self.script, self.requests, self.gets = list(script), [], []   # POSTs (bodies), GET paths
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                if reject_max_tokens and "max_tokens" in body:
                    status, payload, headers = 400, {"error": MAX_TOKENS_REJECTION}, {}
                else:
                    status, content, *rest = outer.script.pop(0) if outer.script else (200, "Scores: 5 5")
                    headers = rest[0] if rest else {}
                    payload = {"choices": [{"message": {"role": "assistant", "content": content}}]} \
                        if status == 200 else {"error": {"message": content}}
                raw = "json" not in headers.get("Content-Type", "application/json")
                data = content.encode() if raw else json.dumps(payload).encode()
                self.send_response(status)
                if not raw:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server API)
                outer.gets.append(self.path)
                if models is None or not self.path.endswith("/models"):
                    self.send_error(404)
                    return
                data = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def first_answer(self, i: int) -> str:
        """The answer shown first to the judge in request ``i`` (fedit's or the Vicuna prompt)."""
        text = self.requests[i]["body"]["messages"][1]["content"]
        if "[Answer 1]\n" in text:
            return text.split("[Answer 1]\n")[1].split("\n\n[Answer 2]")[0]
        return text.split("[The Start of Assistant 1's Answer]\n")[1].split("\n\n[The End of Assistant 1")[0]
