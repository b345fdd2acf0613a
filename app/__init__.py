"""The MLCM Panel dashboard (served by `panel serve app/main.py` or `mlcm app`)."""
