from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import kitmw


async def user(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.path_params["uid"]})


app = Starlette(
    routes=[Mount("/api/v1", routes=[Route("/users/{uid}", user)])],
    middleware=[  # outermost first
        Middleware(kitmw.AccessLog),
        Middleware(kitmw.Metrics),
        Middleware(kitmw.RateLimit, limit="20/second"),
    ],
)
