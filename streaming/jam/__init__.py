"""/ws/jam (Magenta RealTime's jam API): the wire protocol as a pure state machine, its parameters and events, and the
WebSocket shell."""
