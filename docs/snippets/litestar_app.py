from litestar import Litestar, get

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

# Or one concern in Litestar's middleware list: a factory whose parameter is named `app`
# (Litestar passes it by keyword, so DefineMiddleware(kitmw.RateLimit) does not work).
inner = Litestar(
    route_handlers=[read_item],
    middleware=[lambda app: kitmw.RateLimit(app, limit="100/minute")],
)
