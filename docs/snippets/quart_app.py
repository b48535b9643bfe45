from quart import Quart

import kitmw

app = Quart(__name__)


@app.get("/items/<int:item_id>")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


# Wrap in place: `app` stays the Quart object (app.run, test_client, extensions).
app.asgi_app = kitmw.stack(  # type: ignore[method-assign]
    app.asgi_app,
    access_log=True,
    metrics=True,
    ratelimit="100/minute",
)
