"""What a run leaves behind, as types: a cell's result, its provenance, its privacy statement, its audit.

Torch-free on purpose: ``reproduce check``, the report and anyone analysing published results read
these records without importing torch or opacus (a test keeps it so).
"""
