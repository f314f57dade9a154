"""Search at scale: embedding stores, FAISS indexes, OOD references, attribution and filtering, the Ray backend."""
