"""The floor of the stack helixd is built on: an aiohttp server relaying through an
aiohttp client, with nothing else (no names, no scheduler, no metrics, no logs).

Run by ``proxy_overhead.py`` as its own process, so its CPU time can be counted:
``python bench/bare_relay.py UPSTREAM_URL`` prints its URL once it listens.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import aiohttp
from aiohttp import web


async def serve(upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), trust_env=False, auto_decompress=False
    )

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            response = web.StreamResponse(
                status=answer.status,
                headers={"Content-Type": answer.headers.get("Content-Type", "")},
            )
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, listener)
    await site.start()
    print(f"http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
