"""Client keys for a team on one gateway: their limits, checked before an account is spent,
and their usage. Layer: above ``pipeline`` (it implements ``pipeline.admission``), below
``api``; it keeps its state in :mod:`ki2api.store`.

- :mod:`ki2api.teams.keys`: making, hashing and matching keys;
- :mod:`ki2api.teams.gate`: :class:`Teams`, on the request path (who, may they, what used);
- :mod:`ki2api.teams.manage`: create / list / update / revoke and usage reports as plain
  data, for the admin API, the CLI and the page.
"""
