"""A FastAPI service with kitmw in FastAPI's own way: ``uvicorn examples.fastapi_service:app``.

``kitmw.fastapi.instrument`` adds every concern and keeps ``app`` the FastAPI object
(``dependency_overrides``, ``TestClient(app)``); who may call a route, how often, and how
its breaker behaves are written on the route, and ``/docs`` offers Authorize.
Get a token with ``python -m examples.fastapi_service token``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated

from fastapi import Depends, FastAPI

import kitmw
import kitmw.fastapi
from kitmw.auth import Principal
from kitmw.fastapi import breaker, limit, require

SECRET = os.environ.get("JWT_SECRET", "change-me-please-use-a-real-secret-32b")

app = FastAPI(title="orders")


class PaymentProvider:
    """The upstream a payment goes to (tests replace it through ``dependency_overrides``)."""

    async def charge(self, order_id: int) -> str:
        return f"ch_{order_id}"


def payment_provider() -> PaymentProvider:
    return PaymentProvider()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/orders/{order_id}")
async def read_order(order_id: int, user: Annotated[Principal, require("orders:read")]) -> dict[str, object]:
    return {"order_id": order_id, "owner": user.identity}


# Five new orders a minute per caller, on top of the service-wide limit.
@app.post("/orders", dependencies=[limit("5/minute", key="principal")])
async def create_order(user: Annotated[Principal, require("orders:write")]) -> dict[str, str]:
    return {"created_by": user.identity}


# This route's breaker opens after 3 failures in a row (the others' after 5).
@app.post("/orders/{order_id}/pay", dependencies=[breaker(fail_max=3, reset_timeout=30)])
async def pay(
    order_id: int,
    user: Annotated[Principal, require("orders:write")],
    provider: Annotated[PaymentProvider, Depends(payment_provider)],
) -> dict[str, str]:
    return {"charge": await provider.charge(order_id), "by": user.identity}


kitmw.logging.configure(format="json")

kitmw.fastapi.instrument(
    app,
    tracing=True,  # the global TracerProvider: configure an OTLP exporter in production
    access_log=True,
    metrics=True,  # serves /metrics
    ratelimit="100/minute",
    # Callers with a token are known to every concern (access log, limits by principal);
    # each route says with require() whether it needs one, so /docs stays readable.
    auth={"backend": kitmw.auth.JWT(key=SECRET, algorithms=["HS256"]), "optional": True},
    breaker=True,
    exclude_paths=["/health", "/metrics"],
)


def token(subject: str = "alice", scope: str = "orders:read orders:write") -> str:
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
