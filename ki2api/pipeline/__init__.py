"""One request's way through the gateway: picking an account, calling Kiro with retries,
turning its events into a stream of deltas, output limits, concurrency and statistics."""
