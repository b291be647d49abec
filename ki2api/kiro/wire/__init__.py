"""Kiro's wire format, without I/O: the event-stream decoder, events turned into deltas, the
request builder, tool conversion, the model ids and the one table of upstream errors."""
