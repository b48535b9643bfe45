from litestar import Litestar, get
from litestar.middleware import DefineMiddleware

import kitmw


@get("/items/{item_id:int}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


app = kitmw.stack(
    Litestar(route_handlers=[read_item]),
    access_log=True,
    metrics=True,
    ratelimit="100/minute",
)

# Or one concern in Litestar's middleware list (Litestar passes app= by keyword).
inner = Litestar(
    route_handlers=[read_item],
    middleware=[DefineMiddleware(kitmw.RateLimit, limit="100/minute")],
)
