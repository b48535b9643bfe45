from fastapi import FastAPI, Request

import kitmw

api = FastAPI()


@api.get("/whoami")
async def whoami(request: Request) -> dict[str, object]:
    return {"peer": request.client.host if request.client else None}


app = kitmw.stack(
    api,
    access_log=True,
    ratelimit={
        "limit": "100/minute",
        "trusted_proxies": ["10.0.0.0/8"],  # your load balancers' addresses
        "proxy_header": "x-forwarded-for",  # the one header they write
    },
)
