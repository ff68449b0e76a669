"""The one owner of the MusicGen model: loading, generation and scheduling of all model work."""
