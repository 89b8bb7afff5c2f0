"""The command line's HTTP client against real HTTP servers on localhost: it follows no
redirect (the API key would go along, a POST would come back as a GET)."""

import http.server
import threading

import pytest

from thaw.core.errors import ThawError
from thaw.http_client import call


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with `answer` (status, headers); records what it was sent."""

    answer: tuple = (200, {})
    seen: list = []

    def _reply(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.seen.append((self.command, self.path, self.headers.get("authorization"), self.rfile.read(length)))
        status, headers = self.answer
        body = b'{"ok": true}'
        self.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args) -> None:
        pass


def _serve(answer):
    handler = type("Handler", (_Recorder,), {"answer": answer, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.seen


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_named_and_not_followed(status):
    target, target_seen = _serve((200, {}))
    redirecting, seen = _serve((status, {"location": f"http://127.0.0.1:{target.server_port}/thaw/restore"}))
    try:
        with pytest.raises(ThawError, match=rf"redirects \(HTTP {status}\) to 'http://127.0.0.1:{target.server_port}"):
            call(f"http://127.0.0.1:{redirecting.server_port}", "restore", {"path": "a.thaw"}, api_key="secret")
        assert [(m, a) for m, _, a, _ in seen] == [("POST", "Bearer secret")]
        assert target_seen == [], "nothing, and no key, reached the redirect's target"
    finally:
        redirecting.shutdown()
        target.shutdown()
