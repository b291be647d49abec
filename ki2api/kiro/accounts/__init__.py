"""Kiro accounts: credentials and where they come from (login files, settings, the admin API),
token refresh, the account pool with its cooldowns, and the per-account lists (models, usage)."""
