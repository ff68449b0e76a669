"""The realtime sidecar: an ASGI app with sans-I/O protocol modules (/ws/jam, Lyria RealTime) on the shared engine."""
