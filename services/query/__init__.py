"""Query service: retrieval engine, gRPC servicer and server, Python client."""
