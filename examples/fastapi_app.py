"""A FastAPI service with every kitmw concern: ``uvicorn examples.fastapi_app:app``.

Get a token for the protected routes with ``python -m examples.fastapi_app token``.
"""

from __future__ import annotations

import os
import sys
import time

from fastapi import FastAPI, HTTPException, Request

import kitmw

SECRET = os.environ.get("JWT_SECRET", "change-me-please-use-a-real-secret-32b")

api = FastAPI(title="items")


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/items/{item_id}")
async def read_item(item_id: int, request: Request) -> dict[str, object]:
    if item_id == 0:
        raise HTTPException(status_code=404, detail="no such item")
    return {"item_id": item_id, "owner": request.user.identity, "scopes": list(request.auth.scopes)}


@api.post("/items")
async def create_item(item: dict[str, object]) -> dict[str, object]:
    return {"created": item}


kitmw.logging.configure(format="json")

app = kitmw.stack(
    api,
    tracing=True,  # the global TracerProvider: configure an OTLP exporter in production
    access_log=True,
    metrics=True,  # serves /metrics
    ratelimit="100/minute",
    auth={
        "backend": kitmw.auth.JWT(key=SECRET, algorithms=["HS256"]),
        "scopes": {"/items": ["items:read"]},
    },
    breaker=True,
    exclude_paths=["/health", "/metrics"],
)


def token(subject: str = "alice", scope: str = "items:read") -> str:
    import jwt

    return jwt.encode(
        {"sub": subject, "scope": scope, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["token"]:
        print(token())
    else:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=8000, access_log=False)
