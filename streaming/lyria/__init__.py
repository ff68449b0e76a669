"""Lyria RealTime (BidiGenerateMusic): Google's message models, the pure protocol, the WebSocket shell."""
