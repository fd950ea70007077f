"""Request/response mirroring: records offered off the hot path, spooled to disk, shipped to sinks."""
