from fastapi import FastAPI

import kitmw

api = FastAPI()


@api.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


# Wrap from outside: kitmw also sees the 500s FastAPI renders, and its span is the
# only server span (FastAPI's native telemetry steps aside).
app = kitmw.stack(
    api,
    tracing=True,
    access_log=True,
    metrics=True,  # serves /metrics
    ratelimit="100/minute",
    breaker=True,
    exclude_paths=["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes: not logged, counted or traced
)
