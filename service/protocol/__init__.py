"""Protocols as data and codecs, free of their transports: what the HTTP and gRPC doors share."""
