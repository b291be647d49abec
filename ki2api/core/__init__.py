"""The one pipeline every front door shares: request model, stream deltas, errors, gateway."""
