from fastapi import FastAPI

import kitmw

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


# The last middleware added is the outermost: add them innermost first.
app.add_middleware(kitmw.RateLimit, limit="100/minute")
app.add_middleware(kitmw.Metrics, exclude_paths=["/metrics", "/health"])
app.add_middleware(kitmw.AccessLog, exclude_paths=["/metrics", "/health"])
