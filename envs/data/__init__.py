"""Readers of real data (sessions, prices, series) and the generators built on them.

Imported only on demand: ``import envs`` never loads this package or pandas.
"""
