"""WebRTC in FastRTC's wire format: signalling and data-channel controls (pure), the aiortc peer, its track, the HTTP
routes."""
