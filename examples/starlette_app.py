"""A Starlette app with a Mount and nested routes, observed by kitmw classes added
the Starlette way: ``uvicorn examples.starlette_app:app``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route

import kitmw


async def user(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.path_params["uid"]})


async def events(request: Request) -> StreamingResponse:
    async def stream():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"data: {i}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Mount("/api/v1", routes=[Route("/users/{uid}", user)]),
        Route("/events", events),
    ],
    middleware=[
        Middleware(kitmw.Tracing),
        Middleware(kitmw.AccessLog),
        Middleware(kitmw.Metrics),
        Middleware(kitmw.RateLimit, limit="20/second"),
    ],
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
