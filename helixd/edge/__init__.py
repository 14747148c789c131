"""The endpoint's HTTP/1.1, on asyncio protocols with httptools parsing (uvloop's loop when
helixd runs on it): the server apps call (:mod:`.connection`, :mod:`.server`), the
messages its handlers see and answer (:mod:`.message`), their routes (:mod:`.routes`),
and the pooled client that reaches the model servers (:mod:`.client`).

aiohttp's server and client cost about 500 µs of CPU per proxied request on a small
machine; this costs a few tens. The control API stays on aiohttp (a Unix socket, a
handful of requests).
"""
