"""Plain helpers that every layer may use: crash-safe writes (`atomic_file`), bounded reads of
files the user names (`bounded_read`), this process's memory (`memory`), OpenMP's idle spin
set before torch loads (`openmp`), and the one-line errors shown to users (`errors`).

May import: the standard library only.
"""
