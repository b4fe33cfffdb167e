"""Feedback on answers: 👍/👎 with an optional comment, kept with the question, the answer and its sources."""
