"""One trial: the CNN-LSTM head, its hyperparameters and search space, the paper's metrics, and
k-fold cross-validation of one config (the k fold models trained in lockstep), as a Ray Tune
function trainable. Imports nothing of `hpo.search`, `hpo.results` or `hpo.cli`."""

from ._folds import (
    FoldData as FoldData,
)
from ._folds import (
    FoldState as FoldState,
)
from ._folds import (
    fold_data as fold_data,
)
from ._lockstep import (
    CVResult as CVResult,
)
from ._lockstep import (
    LockstepCV as LockstepCV,
)
from ._lockstep import (
    balanced_class_weights as balanced_class_weights,
)
from ._lockstep import (
    cross_validate as cross_validate,
)
from ._lockstep import (
    cross_validate_with as cross_validate_with,
)
from ._lockstep import (
    fit_head as fit_head,
)
from ._metrics import (
    BOOTSTRAP as BOOTSTRAP,
)
from ._metrics import (
    CLASS_METRICS as CLASS_METRICS,
)
from ._metrics import (
    bootstrap_ci as bootstrap_ci,
)
from ._metrics import (
    flatten as flatten,
)
from ._metrics import (
    float_or_nan as float_or_nan,
)
from ._metrics import (
    fold_metrics as fold_metrics,
)
from ._metrics import (
    summarize as summarize,
)
from ._model import (
    MAX_DENSE_LAYERS as MAX_DENSE_LAYERS,
)
from ._model import (
    PREDICT_BATCH as PREDICT_BATCH,
)
from ._model import (
    build_model as build_model,
)
from ._model import (
    head_of as head_of,
)
from ._model import (
    predict_proba as predict_proba,
)
from ._model import (
    required_params as required_params,
)
from ._settings import (
    HISTORY as HISTORY,
)
from ._settings import (
    STATE_FILE as STATE_FILE,
)
from ._settings import (
    STUDY_KEY as STUDY_KEY,
)
from ._settings import (
    TRIAL_FILE as TRIAL_FILE,
)
from ._settings import (
    TrialSettings as TrialSettings,
)
from ._space import (
    HEADS as HEADS,
)
from ._space import (
    PAPER_BEST as PAPER_BEST,
)
from ._space import (
    RECURRENT_KEYS as RECURRENT_KEYS,
)
from ._space import (
    STRUCTURE as STRUCTURE,
)
from ._space import (
    InvalidSpaceError as InvalidSpaceError,
)
from ._space import (
    active as active,
)
from ._space import (
    draw_order as draw_order,
)
from ._space import (
    is_paper_best as is_paper_best,
)
from ._space import (
    paper_best as paper_best,
)
from ._space import (
    search_space as search_space,
)
from ._space import (
    shown_params as shown_params,
)
from ._space import (
    study_space as study_space,
)
from ._tensorflow import (
    configure_tensorflow as configure_tensorflow,
)
from ._trainable import (
    train_cv as train_cv,
)
from ._trainable import (
    training_record as training_record,
)
from ._trainable import (
    write_trial as write_trial,
)
