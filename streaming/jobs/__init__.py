"""Jobs for clients that submit work and come back for it (gary, magenta-retry's /generate): a bounded table keyed by
id."""
