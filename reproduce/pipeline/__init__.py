"""Running studies through DVC: the generated pipelines (``stages``), the run of a study's cells on
local processes or SLURM (``run``, ``executors``, ``workspace``, ``dvc_state``, ``progress``) and DVC
experiments over a study's settings (``experiments``)."""
