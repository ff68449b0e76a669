"""FastRTC's WebSocket transport (`/websocket/offer`, phone mode at `/telephone/handler`): the protocol as a pure
state object and its Starlette shell."""
