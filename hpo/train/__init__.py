"""One trial: the CNN-LSTM head, its hyperparameters and search space, the paper's metrics, and
k-fold cross-validation of one config (the k fold models trained in lockstep), as a Ray Tune
function trainable. Imports nothing of `hpo.search`, `hpo.results` or `hpo.cli`.

The names are those of ``__init__.pyi``; each is imported from its private module on first use
(`lazy_loader`), so that importing one of them does not import the whole layer (the CLI checks a
config without importing Ray or TensorFlow)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
