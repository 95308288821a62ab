"""Studies: the YAML config, the objective, our Ray Tune searcher over Optuna's storage, and
the drivers that run one study, a grid of them or nested CV's outer folds as one Ray Tune
experiment, with their run files and locks. Builds on `hpo.train`; never imports
`hpo.results` or `hpo.cli`.

The names are those of ``__init__.pyi``; each is imported from its private module on first use
(`lazy_loader`), so that importing one of them does not import the whole layer (the CLI checks a
config without importing Ray or TensorFlow)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
