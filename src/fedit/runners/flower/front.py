"""The Fleet front: the only address data owners reach, forwarding the Fleet API alone.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (``flwr run``, node registration)
and the runtime API (ServerApp processes) over HTTP on one host and port, and the open-source
Control API has no user authentication: whoever reaches that port with the CA certificate can
submit an app, which then runs on the SuperLink and on every SuperNode, or register a node of
their own. fedit therefore binds the SuperLink to loopback and puts this front on the address
the data owners connect to. It terminates TLS with the SuperLink's certificate and forwards a
request to the SuperLink only when its path is one of the Fleet API's (``/v1/fleet/...``, POST);
anything else is answered 403 and logged with the caller's address. The operator reaches the
Control API on loopback (the SuperLink's machine, or an SSH tunnel to it).

The front is a small ASGI app on the same stack Flower's SuperLink itself runs (uvicorn,
starlette, httpx, all installed with flwr); no proxy software to install, and its rule fits in one
line: :func:`allowed`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Sequence

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

FLEET_PREFIX = "/v1/fleet/"
# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx/uvicorn set themselves.
_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "proxy-authenticate", "content-length"}
REFUSAL = "fedit: this address serves the Flower Fleet API only (SuperNodes); the Control API is not reachable here\n"


def allowed(method: str, path: str) -> bool:
    """The front's whole rule: a SuperNode's Fleet API call, nothing else."""
    return method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path and "//" not in path


def make_app(upstream: str, ca_cert: Path | None, timeout: float = 600.0) -> Starlette:
    """The ASGI app forwarding allowed requests to ``upstream`` (``https://127.0.0.1:PORT`` or
    ``http://...``), verifying its certificate against ``ca_cert`` when given."""
    client = httpx.AsyncClient(base_url=upstream, verify=ssl.create_default_context(cafile=str(ca_cert))
                               if ca_cert else False, timeout=timeout)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not allowed(request.method, path):
            peer = request.client.host if request.client else "?"
            logger.warning("refused %s %s from %s: not a Fleet API call", request.method, path[:200], peer)
            return PlainTextResponse(REFUSAL, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
        try:
            reply = await client.request(request.method, path, content=await request.body(), headers=headers,
                                         params=request.query_params)
        except httpx.HTTPError as exc:
            logger.warning("SuperLink unreachable for %s: %s", path, exc)
            return PlainTextResponse("fedit: the SuperLink behind this front is not reachable\n", status_code=502)
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in _DROP | {"content-encoding"}}
        return Response(reply.content, status_code=reply.status_code, headers=kept)

    routes = [Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


def is_front(address: str, ca_cert: Path | None, timeout: float = 5.0) -> bool:
    """Whether ``address`` (HOST:PORT) is a Fleet front (it refuses a Control API call with our
    answer): the operator's commands then name the wrong port. False when it cannot tell."""
    url = f"{'https' if ca_cert else 'http'}://{address}/v1/control/list-runs"
    try:
        verify = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
        reply = httpx.post(url, content=b"", verify=verify, timeout=timeout)
    except (httpx.HTTPError, OSError, ValueError):
        return False
    return reply.status_code == 403 and reply.text == REFUSAL


def serve(host: str, port: int, upstream: str, *, ca_cert: Path | None = None, cert: Path | None = None,
          key: Path | None = None) -> None:
    """Run the front in the foreground (until SIGINT/SIGTERM)."""
    logger.info("Fleet front on %s:%d (%s) -> SuperLink %s; only %s* is forwarded", host, port,
                "TLS" if cert else "no TLS", upstream, FLEET_PREFIX)
    uvicorn.run(make_app(upstream, ca_cert), host=host, port=port, ssl_certfile=str(cert) if cert else None,
                ssl_keyfile=str(key) if key else None, log_level="warning", access_log=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedit.runners.flower.front``: how ``fedit deploy`` starts the front as a process."""
    p = argparse.ArgumentParser(prog="fedit-fleet-front", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the SuperLink, e.g. https://127.0.0.1:9092")
    p.add_argument("--ssl-ca-certfile", type=Path)
    p.add_argument("--ssl-certfile", type=Path)
    p.add_argument("--ssl-keyfile", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port, args.upstream, ca_cert=args.ssl_ca_certfile, cert=args.ssl_certfile,
          key=args.ssl_keyfile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
