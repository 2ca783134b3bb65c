"""A Hugging Face Hub in memory, served to huggingface_hub's own HTTP client (``set_client_factory``).

The library's real code runs: ``HfApi().model_info``, ``auth_check``, ``list_repo_tree``,
``hf_hub_download`` (HEAD for the metadata, GET with ``Range`` to resume), ``snapshot_download``,
``create_repo``; only the server is fake. Its answers
follow the Hub's documented HTTP contract: ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's sha256,
which names its blob in the cache) and ``X-Linked-Size`` on ``/resolve``, ``X-Error-Code: GatedRepo``
with 401 (no token) or 403 (a token without access) for a gated repo's files, and a 401 or 403 for
every write when ``write_status`` says so. Nothing leaves the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)  # repos whose files need an access the caller lacks
    write_status: int | None = None  # answer every write (create, upload) with this status
    broken: set[str] = field(default_factory=set)  # files whose download fails (500)
    drop_once: set[str] = field(default_factory=set)  # files whose first download breaks off half-way
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)

    def add(self, repo: str, folder: Path) -> None:
        folder = Path(folder)
        self.repos[repo] = {p.relative_to(folder).as_posix(): p.read_bytes()
                            for p in sorted(folder.rglob("*")) if p.is_file()}

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(b"commit:" + repo.encode()).hexdigest()

    @staticmethod
    def etag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def file_gets(self) -> list[str]:
        """Paths of the file downloads (GET on /resolve), in order."""
        return [p for m, p, _ in self.requests if m == "GET" and "/resolve/" in p]

    def file_requests(self) -> list[str]:
        """Paths of every request for a file (HEAD for its metadata or GET), in order."""
        return [p for m, p, _ in self.requests if "/resolve/" in p]

    def handler(self, http):
        def handle(request):
            path, method = request.url.path, request.method
            self.requests.append((method, path, request.headers.get("Range", "")))
            token = request.headers.get("authorization")
            if method != "GET" and method != "HEAD" and self.write_status:
                return http.Response(self.write_status, headers={"X-Error-Message": "write access denied"},
                                     json={"error": "write access denied"}, request=request)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/[^/]+)?(/auth-check)?", path)
            if m:
                repo = m.group(1)
                if repo not in self.repos:
                    return http.Response(401, headers={"X-Error-Code": "RepoNotFound"}, request=request)
                if m.group(3):  # auth-check
                    if repo in self.gated:
                        return http.Response(403 if token else 401, headers={"X-Error-Code": "GatedRepo"},
                                             request=request)
                    return http.Response(200, json={}, request=request)
                siblings = [{"rfilename": p, "size": len(d), "blobId": hashlib.sha1(d).hexdigest(),
                             "lfs": {"sha256": self.etag(d), "size": len(d), "pointerSize": 130}}
                            for p, d in self.repos[repo].items()]
                return http.Response(200, json={"id": repo, "sha": self.commit(repo), "siblings": siblings,
                                                "private": False, "gated": repo in self.gated},
                                     request=request)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+/?", path)
            if m and m.group(1) in self.repos:  # list_repo_tree (recursive, one page)
                return http.Response(200, json=[
                    {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest(),
                     "lfs": {"oid": self.etag(d), "size": len(d), "pointerSize": 130}}
                    for p, d in self.repos[m.group(1)].items()], request=request)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                repo, name = m.group(1), m.group(3)
                if repo in self.gated:
                    return http.Response(403 if token else 401, headers={"X-Error-Code": "GatedRepo"},
                                         request=request)
                data = self.repos.get(repo, {}).get(name)
                if data is None:
                    return http.Response(404, headers={"X-Error-Code": "EntryNotFound"}, request=request)
                headers = {"X-Repo-Commit": self.commit(repo), "X-Linked-Etag": f'"{self.etag(data)}"',
                           "X-Linked-Size": str(len(data)), "ETag": f'"{self.etag(data)}"'}
                if method == "HEAD":
                    return http.Response(200, headers={**headers, "Content-Length": str(len(data))},
                                         request=request)
                if name in self.broken:
                    return http.Response(500, json={"error": "server error"}, request=request)
                start = int(re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", "bytes=0-")).group(1))
                if name in self.drop_once:
                    self.drop_once.discard(name)
                    return http.Response(200, headers={**headers, "Content-Length": str(len(data))},
                                         stream=_BreaksOff(http, data[: len(data) // 2]), request=request)
                return http.Response(206 if start else 200, headers=headers, content=data[start:], request=request)
            return http.Response(404, json={"error": f"no route {method} {path}"}, request=request)

        return handle

    @contextlib.contextmanager
    def serving(self, monkeypatch, cache: Path, token: str | None = None) -> Iterator[FakeHub]:
        """Serve this Hub to huggingface_hub, online, with the cache at ``cache`` and ``token`` (None:
        logged out); the library's own client factory is back after the block."""
        import huggingface_hub
        import huggingface_hub.constants as constants
        from huggingface_hub.utils import _http

        http = importlib.import_module(type(huggingface_hub.get_session()).__module__.split(".")[0])
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(Path(cache) / "no-token"))
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        else:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        original = _http._GLOBAL_CLIENT_FACTORY
        huggingface_hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(self.handler(http)),
                                                               follow_redirects=True))
        try:
            yield self
        finally:
            huggingface_hub.set_client_factory(original)


def _BreaksOff(http, head: bytes):
    """A response body that sends ``head`` and then loses the connection."""

    class BreaksOff(http.SyncByteStream):
        def __iter__(self):
            yield head
            raise http.RemoteProtocolError("peer closed connection without sending complete message body")

    return BreaksOff()
