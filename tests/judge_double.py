"""A test double of an OpenAI-compatible chat-completions endpoint, for the judge tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedJudgeServer:
    """A TEST DOUBLE of an OpenAI-compatible ``POST /v1/chat/completions`` endpoint on 127.0.0.1
    (port 0, in a thread). It answers with the scripted (status, content) pairs in order and
    records every request body and Authorization header; it is not a model."""

    def __init__(self, script: list[tuple[int, str]]) -> None:
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                status, content = outer.script.pop(0) if outer.script else (200, "Scores: 5 5")
                payload = {"choices": [{"message": {"role": "assistant", "content": content}}]} \
                    if status == 200 else {"error": {"message": content}}
                data = json.dumps(payload).encode()
                self.send_response(status)
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
        """The answer shown first to the judge in request ``i``."""
        text = self.requests[i]["body"]["messages"][1]["content"]
        return text.split("[Answer 1]\n")[1].split("\n\n[Answer 2]")[0]
