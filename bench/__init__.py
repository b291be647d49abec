"""Benchmarks for Ki2API: ``python -m bench`` runs them all (see ``bench/run.py``);
``python -m bench.decoder`` runs the decoder benchmark alone, ``python -m bench.teams`` what client
keys and usage accounting add (20 keys, 4 accounts) and that no usage is lost."""
