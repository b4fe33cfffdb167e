"""Retrieval evaluation: a QA set -> a scratch index of its retrieval units -> recall@k, MRR@10, nDCG@10, latency.

Apart from the request-serving code: it builds what it needs through kb.container and holds it by the kb.ports
protocols, as the service does. By job: datasets (QA set loaders), entries (what the scratch index holds for a
unit), vector_cache (embeddings cached on disk), scratch_index (the throwaway index), metrics, and run
(RetrievalEvaluation, which ties them together for `kb eval retrieval` and bench.retrieval).
"""
