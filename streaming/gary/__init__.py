"""The gary plugins' API (gary4juce's HTTP + poll, gary4live's Socket.IO) on the job table: pure protocol, one
service, two shells."""
