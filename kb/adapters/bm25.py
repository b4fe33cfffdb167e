"""Moved to kb.index.bm25 and kb.index.fusion; re-exported until kb.container.build_scratch_index imports them there."""
from kb.index.bm25 import Bm25Terms as Bm25Terms
from kb.index.fusion import HybridFusion as HybridFusion
