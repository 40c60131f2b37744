"""Where the store is and what a collection is called when nobody says (light: no pymilvus import)."""

DEFAULT_URI = "./cbmir.db"  # Milvus Lite, a local file
DEFAULT_COLLECTION = "cbmir_images"
