"""One trial: the CNN-LSTM head, its hyperparameters and search space, the paper's metrics, and
k-fold cross-validation of one config (the k fold models trained in lockstep), as a Ray Tune
function trainable. Imports nothing of `hpo.search`, `hpo.results` or `hpo.cli`."""

from ._metrics import (
    BOOTSTRAP as BOOTSTRAP,
    CLASS_METRICS as CLASS_METRICS,
    bootstrap_ci as bootstrap_ci,
    flatten as flatten,
    float_or_nan as float_or_nan,
    fold_metrics as fold_metrics,
    summarize as summarize,
)
from ._model import (
    MAX_DENSE_LAYERS as MAX_DENSE_LAYERS,
    PREDICT_BATCH as PREDICT_BATCH,
    build_model as build_model,
    head_of as head_of,
    predict_proba as predict_proba,
    required_params as required_params,
)
from ._settings import (
    HISTORY as HISTORY,
    STATE_FILE as STATE_FILE,
    STUDY_KEY as STUDY_KEY,
    TRIAL_FILE as TRIAL_FILE,
    TrialSettings as TrialSettings,
)
from ._space import (
    HEADS as HEADS,
    InvalidSpaceError as InvalidSpaceError,
    PAPER_BEST as PAPER_BEST,
    RECURRENT_KEYS as RECURRENT_KEYS,
    STRUCTURE as STRUCTURE,
    active as active,
    draw_order as draw_order,
    is_paper_best as is_paper_best,
    paper_best as paper_best,
    search_space as search_space,
    shown_params as shown_params,
    study_space as study_space,
)
from ._trainable import (
    CVResult as CVResult,
    LockstepCV as LockstepCV,
    balanced_class_weights as balanced_class_weights,
    configure_tensorflow as configure_tensorflow,
    cross_validate as cross_validate,
    cross_validate_with as cross_validate_with,
    fit_head as fit_head,
    train_cv as train_cv,
    write_trial as write_trial,
)
