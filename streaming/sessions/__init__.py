"""The session machinery every protocol shares: the supervisor, the registry (resume), the pump and its lead,
recordings, the WebSocket reader shell."""
