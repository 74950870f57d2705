"""Benchmarks: the relay beside its ceiling and its naive baseline, measured in one run.

``python -m bench`` runs every scenario and writes ``bench/results/``; see BENCHMARKS.md.
"""
