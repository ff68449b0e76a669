"""Bar mode (magenta-retry's `mode: "bar"` and HTTP API): whole bars at the client's tempo, its wire formats and
shells."""
