"""Timing policies: how counted FLOPs and bytes become seconds.

``seed003`` reproduces seed 003's algebra, quirks included.
"""
