"""Benchmarks for Ki2API: ``python -m bench`` runs them all (see ``bench/run.py``);
``python -m bench.decoder`` runs the decoder benchmark alone."""
