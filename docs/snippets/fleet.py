import os

from fastapi import FastAPI

import kitmw

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

api = FastAPI()


@api.post("/orders")
async def create_order(order: dict[str, object]) -> dict[str, object]:
    return {"created": order}


app = kitmw.stack(
    api,
    access_log=True,
    metrics=True,
    # one budget per client across every replica and worker
    ratelimit={"limit": "10/second;1000/hour", "storage": REDIS_URL, "namespace": "orders"},
    # one breaker state for the fleet: replicas open (and probe) together
    breaker={"storage": REDIS_URL, "name": "orders"},
    exclude_paths=["/metrics", "/health"],
)
