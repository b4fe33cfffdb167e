"""Ask: a question answered from the documents the caller may see, with numbered citations.

pipeline.py orchestrates the stages (conversation, scope, query, retrieve, pack, generate, cite, remember), each in
its own module; events.py is what the doors consume; routes.py (/v1/ask, SSE) and openai.py (/v1/chat/completions)
are the HTTP doors; access.py is what every door does around the pipeline."""
