"""Everything that speaks to the Kiro upstream: codec, events, request builder, client, auth."""
