"""A real uvicorn server on a loopback port for the client tests, and an app
that answers the way each exchange's SDK expects while recording what passed
keyguard (so a test can replay or tamper with a request a real SDK signed)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyguard import KeyGuard
from keyguard.asgi import KeyGuardMiddleware

from ..servers import free_port


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on 127.0.0.1 (at most 10 s to start and
    to stop); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Seen:
    """A request that passed keyguard: as sent, and what the app read from it."""

    method: str
    target: str  # the raw path and query, as on the wire
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]


@dataclass
class Recorder:
    seen: list[Seen] = field(default_factory=list)

    @property
    def last(self) -> Seen:
        return self.seen[-1]


# How each exchange wraps a successful answer (what its SDK checks before returning).
SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bitget": lambda data: {"code": "00000", "msg": "success", "requestTime": 0, "data": data},
    "okx": lambda data: {"code": "0", "msg": "", "data": [data]},
    "bybit": lambda data: {"retCode": 0, "retMsg": "OK", "result": data, "time": 0},
}


def exchange_app(guard: KeyGuard, shape: str, recorder: Recorder) -> Any:
    """Every path and method answers with the calling key, the query as the app
    decoded it and the body, wrapped as the exchange `shape` does."""

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        scope = request.scope
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        params = dict(request.query_params)
        recorder.seen.append(Seen(request.method, target, dict(request.headers), body, params))
        data = {"key": scope["keyguard.key"].id, "params": params, "body": body.decode()}
        return JSONResponse(SHAPES[shape](data))

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE"])])
    app.add_middleware(KeyGuardMiddleware, guard=guard)
    return app
