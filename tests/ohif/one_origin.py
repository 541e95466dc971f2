"""One origin for OHIF and the PACS: the viewer's static files and Orthanc's DICOMweb.

OHIF loads its bundles from `/`, routes in the browser (`/viewer?...` must answer with
index.html) and talks DICOMweb; served from one origin there is no CORS to configure and the
browser never sees Orthanc's credentials (the proxy adds them). Test harness only.
"""

from __future__ import annotations

import base64
import mimetypes
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROXIED_PREFIXES = ("/dicom-web/", "/wado")
PROXY_TIMEOUT_S = 60
CHUNK = 1 << 16
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(
        self, *args: object, dist: Path, app_config: str, upstream: str, authorization: str
    ) -> None:
        self.dist, self.app_config = dist, app_config
        self.upstream, self.authorization = upstream, authorization
        super().__init__(*args)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: object) -> None:  # the stdlib's signature
        pass  # quiet: hundreds of requests per study

    def do_GET(self) -> None:
        if self.path.startswith(PROXIED_PREFIXES):
            self._proxy()
        elif self.path.split("?")[0] == "/app-config.js":
            self._send(200, "text/javascript", self.app_config.encode("utf-8"))
        else:
            self._static()

    def do_POST(self) -> None:
        if self.path.startswith(PROXIED_PREFIXES):
            self._proxy()
        else:
            self._send(405, "text/plain", b"method not allowed")

    def _static(self) -> None:
        relative = self.path.split("?")[0].split("#")[0].lstrip("/")
        candidate = (self.dist / relative).resolve()
        inside = candidate == self.dist or self.dist in candidate.parents
        if not (inside and candidate.is_file()):
            candidate = self.dist / "index.html"  # the viewer's own routes (/viewer, ...)
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        self._send(200, content_type, candidate.read_bytes())

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command)
        for name in ("Accept", "Content-Type", "Range"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        request.add_header("Authorization", self.authorization)
        try:
            response = urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            payload = response.read()
            content_type = response.headers.get("Content-Type", "application/octet-stream")
            self._send(response.status, content_type, payload)

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)


def app_config(origin: str) -> str:
    """OHIF's configuration: one DICOMweb data source, Orthanc's, through this origin."""
    root = f"{origin}/dicom-web"
    return f"""window.config = {{
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'orthanc',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {{
      friendlyName: 'Orthanc (medrega-pacs)',
      name: 'orthanc',
      qidoRoot: '{root}',
      wadoRoot: '{root}',
      wadoUriRoot: '{origin}/wado',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: 'bulkdata,video',
      bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
      omitQuotationForMultipartRequest: true,
    }},
  }}],
}};
"""


@contextmanager
def one_origin(dist: Path, upstream: str, user: str, password: str) -> Iterator[str]:
    """Serve `dist` and proxy DICOMweb to `upstream` on a free loopback port; yields the origin."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    # The handler needs the origin (the port) in its configuration: bound once the port is.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    server.RequestHandlerClass = partial(
        _Handler,
        dist=dist.resolve(),
        app_config=app_config(origin),
        upstream=upstream.rstrip("/"),
        authorization=f"Basic {token}",
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-one-origin", daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
