"""Where the store is and what a collection is called when nobody says (light: no pymilvus import)."""

DEFAULT_URI = "./cbmir.db"  # Milvus Lite, a local file
DEFAULT_COLLECTION = "cbmir_images"


def is_server_uri(uri: str) -> bool:
    """A Milvus server address (http://host:19530 and the like); anything else is a Milvus Lite file path."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))
