"""kitmw around a raw ASGI callable (no framework): ``uvicorn examples.raw_asgi:app``.

Without a router there is no route template, so every request is labelled
``<unmatched>`` in metrics; give routes a framework to get templates.
"""

from __future__ import annotations

from typing import Any

import kitmw


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello\n"})


app = kitmw.stack(hello, access_log=True, metrics=True, ratelimit="10/second")

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
