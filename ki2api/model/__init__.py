"""The vocabulary every layer shares: the internal request, the deltas an answer is made of, the
error tree, and small helpers (ids, the per-request context, log-safe printing). Imports nothing
else of ours."""
