"""Workloads: GPT model configs and zoo, op graphs per phase, a numpy reference model.

Imports nothing from `wse_sim` or `mapper`. Submodules: `models`, `graph`, `reference`.
"""
