"""The work types callers hold: a prediction (batch), a live session, the chunks it hands out and the settings that
steer it."""
