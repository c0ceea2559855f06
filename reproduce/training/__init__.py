"""Training one grid cell: one loop over a small trainer interface, two trainers, evaluation, result.

``trainer`` is the interface the loop (``loop``) drives; ``private`` (DP-SGD through opacus) and
``plain`` (non-private) implement it, each a drop-in for the other, as opacus's ``make_private``
hands back drop-in model, optimizer and loader. ``state`` is what a checkpoint holds, ``evaluate``
what is measured on the trained weights, ``result`` what a cell releases. ``reproduce.training.cell``
composes them for one cell.
"""
