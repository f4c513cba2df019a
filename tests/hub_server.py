"""A minimal Hugging Face Hub on 127.0.0.1 for tests: enough of the HTTP API for huggingface_hub's own
`snapshot_download` and `upload_folder` to run for real, so that the cache they lay out and the commits
they make are exactly what the library does, with no network.

Repos live in memory: {repo_id: {"sha": commit, "files": {name: bytes}}}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.repos[repo_id] = {"sha": sha, "files": dict(files)}
        return sha


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", headers=None, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, code=200):
            self._send(code, json.dumps(obj).encode())

        def _not_found(self, what="Repository not found"):
            self._send(404, json.dumps({"error": what}).encode(), {"X-Error-Code": "RepoNotFound", "X-Error-Message": what})

        def _route(self):
            path = self.path.split("?")[0]
            hub.requests.append(f"{self.command} {path}")
            m = re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path)
            if m and self.command == "GET":
                repo = hub.repos.get(m.group(1))
                if repo is None:
                    return self._not_found()
                return self._json({"id": m.group(1), "modelId": m.group(1), "sha": repo["sha"], "private": False,
                                   "siblings": [{"rfilename": f} for f in sorted(repo["files"])]})
            m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", path)
            if m and self.command == "GET":
                repo = hub.repos.get(m.group(1))
                if repo is None:
                    return self._not_found()
                return self._json([{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                   for f, b in sorted(repo["files"].items())])
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m and self.command in ("GET", "HEAD"):
                repo = hub.repos.get(m.group(1))
                if repo is None:
                    return self._not_found()
                body = repo["files"].get(m.group(3))
                if body is None:
                    return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
                etag = '"' + hashlib.sha1(body).hexdigest() + '"'
                return self._send(200, body, {"X-Repo-Commit": repo["sha"], "ETag": etag}, "application/octet-stream")
            if path == "/api/repos/create" and self.command == "POST":
                data = json.loads(self._body() or b"{}")
                repo_id = f"{data.get('organization') or 'user'}/{data['name']}"
                hub.repos.setdefault(repo_id, {"sha": "0" * 40, "files": {}})
                return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            m = re.match(r"^/api/models/([^/]+/[^/]+)/preupload/([^/]+)$", path)
            if m and self.command == "POST":
                files = json.loads(self._body())["files"]
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            m = re.match(r"^/api/models/([^/]+/[^/]+)/commit/([^/]+)$", path)
            if m and self.command == "POST":
                repo = hub.repos.setdefault(m.group(1), {"sha": "0" * 40, "files": {}})
                for line in self._body().decode().splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        value = item["value"]
                        repo["files"][value["path"]] = base64.b64decode(value["content"])
                repo["sha"] = hashlib.sha1(repr(sorted(repo["files"].items())).encode()).hexdigest()
                return self._json({"commitUrl": f"{hub.endpoint}/{m.group(1)}/commit/{repo['sha']}",
                                   "commitOid": repo["sha"], "success": True})
            if path == "/api/validate-yaml" and self.command == "POST":
                return self._json({"errors": [], "warnings": []})
            m = re.match(r"^/api/whoami-v2$", path)
            if m:
                return self._json({"name": "user", "type": "user", "orgs": []})
            return self._send(404, json.dumps({"error": f"not routed: {self.command} {path}"}).encode())

        def _body(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                return self.rfile.read(n)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        do_GET = do_HEAD = do_POST = _route

    return Handler
