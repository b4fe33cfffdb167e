"""The vector index, backend-neutral: what a chunk's point holds (schema), how text becomes BM25 terms (segment,
bm25), how a hybrid query fuses its lists (fusion), and every read and write as a plan of plain dataclasses (plan).
The adapters in kb.adapters (Qdrant Edge, qdrant-client) only translate a plan into their client's types and run it.
"""
