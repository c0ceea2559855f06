"""What the suite checks of itself: results against baselines (``baseline``), per-sample gradients
against brute force (``gradients``), every configuration of a study in a few steps (``smoke``), and
the privacy audit's verdict on a result (``audit``)."""
