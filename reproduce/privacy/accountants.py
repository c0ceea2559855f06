"""The privacy accountants a study may name (``privacy.accountant``), by the names opacus gives them.

``rdp``: Renyi DP (Mironov 2017; opacus's default); ``prv``: privacy random variables (Gopi, Lee &
Wutschitz 2021), tighter for many steps. opacus's ``gdp`` is left out: its central-limit approximation is
not an upper bound on epsilon. Torch-free, so that the study schema reads it without opacus;
``reproduce.privacy.accounting`` passes the name to ``opacus.accountants.create_accountant``.
"""

from __future__ import annotations

ACCOUNTANTS = ("rdp", "prv")
