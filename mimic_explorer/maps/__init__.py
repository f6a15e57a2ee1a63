"""The pool as a map: 2-D layouts of a run's embeddings, user coordinates, nearest neighbours.

numpy and scikit-learn only (UMAP and the ANN index through optional extras): the app, the command
line and notebooks use it alike, and nothing here imports torch or panel. The vectors and layouts are
run files (``store.layout``); see docs/guide/app.md (the Map view).
"""
