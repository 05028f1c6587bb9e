"""The Hydra layer: what train.py, sample.py and evaluate.py run (config in, files out).

Only this package, ``configs/`` and the three scripts know about Hydra; the library below does not.
"""
