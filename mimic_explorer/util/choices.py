"""Every closed set of values an option takes, in one place, importing nothing.

Why: the lists used to be spelled in the parser, in the options and in the training loop, and drifted
apart (an optimizer accepted by one and refused by another). The parser's ``choices``, the options'
``validate()``, the help texts and the code that gives each value its meaning (the loop's optimizers,
Stage 1's methods, Stage 2's votes, a dual encoder's towers) all read them here. Nothing here imports
torch, so the command line stays quick to start.
"""

from __future__ import annotations

#: ``--method`` of ``train``: Stage 1's per-batch weighting (``scoring.stage1``)
METHODS = ("proj", "cos", "normed_proj", "normed_cos")
#: ``score --method``: the score recorded and voted on
SCORE_METHODS = ("proj", "cos")
#: ``--optimizer``: AdamW, or SGD with momentum 0.9 (``training.loop``)
OPTIMIZERS = ("adamw", "sgd")
#: ``--reweight``: the mimic layers get the re-weighted gradient (the rest the mean one), or every parameter
REWEIGHTS = ("head", "all")
#: ``--binarise``: Stage 2's per-epoch vote (``stage2.votes``)
BINARISATIONS = ("weight", "proj", "gmm", "kmeans")
#: ``--aggregate``: Stage 2's vote over epochs
AGGREGATIONS = ("majority", "unanimity", "mean")
#: ``--noise-type``: exactly int(RATE·N) labels flipped to a random other class, or the CIFAR-10 class-pair map
NOISE_TYPES = ("symmetric", "asymmetric")
#: ``--mimic-layer``: the tower whose last linear projection is a dual encoder's mimic layer (``models.dual``)
MIMIC_LAYERS = ("image", "text")
#: ARCH families (``models.registry.parse_arch``) whose published weights ``--pretrained`` loads
PRETRAINED_FAMILIES = ("timm", "torchvision")
#: ``map --method``: how a run's embeddings are laid out in 2-D (``maps.layout2d``); umap needs the ``umap`` extra
MAP_METHODS = ("pca", "umap")
#: ``map --source``: which embedding of the run is laid out (a pair has both; a labelled sample its image's)
MAP_SOURCES = ("image", "text")
#: ``review --decision``: what a person decided about a sample (``store.reviews``)
REVIEW_DECISIONS = ("keep", "drop", "relabel")
#: ``export --reviews``: whether the run's review decisions change the keep-list
REVIEW_MODES = ("apply", "ignore")
