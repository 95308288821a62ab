"""Studies: the YAML config, the objective, our Ray Tune searcher over Optuna's storage, and
the drivers that run one study, a grid of them or nested CV's outer folds as one Ray Tune
experiment, with their run files and locks. Builds on `hpo.train`; never imports
`hpo.results` or `hpo.cli`."""

from ._config import (
    InvalidConfigError as InvalidConfigError,
)
from ._config import (
    StudyConfig as StudyConfig,
)
from ._config import (
    check_extractable as check_extractable,
)
from ._config import (
    config_keys as config_keys,
)
from ._config import (
    from_dict as from_dict,
)
from ._config import (
    load_config as load_config,
)
from ._grid import (
    ONE_EXPERIMENT as ONE_EXPERIMENT,
)
from ._grid import (
    cell_configs as cell_configs,
)
from ._grid import (
    cell_label as cell_label,
)
from ._grid import (
    read_grid as read_grid,
)
from ._grid import (
    run_grid as run_grid,
)
from ._nested import (
    NESTED_FILE as NESTED_FILE,
)
from ._nested import (
    NestedLeakError as NestedLeakError,
)
from ._nested import (
    card_entry as card_entry,
)
from ._nested import (
    inner_split as inner_split,
)
from ._nested import (
    nested_table as nested_table,
)
from ._nested import (
    outer_config as outer_config,
)
from ._nested import (
    read_nested as read_nested,
)
from ._nested import (
    refit_and_score as refit_and_score,
)
from ._nested import (
    run_nested as run_nested,
)
from ._optuna_storage import (
    PASSWORD_ENV as PASSWORD_ENV,
)
from ._optuna_storage import (
    URL_ENV as URL_ENV,
)
from ._optuna_storage import (
    StoragePasswordError as StoragePasswordError,
)
from ._optuna_storage import (
    StorageUnreachableError as StorageUnreachableError,
)
from ._optuna_storage import (
    connectable as connectable,
)
from ._optuna_storage import (
    has_study as has_study,
)
from ._optuna_storage import (
    masked as masked,
)
from ._optuna_storage import (
    open_storage as open_storage,
)
from ._optuna_storage import (
    remember as remember,
)
from ._prepare import (
    cache_dir_for as cache_dir_for,
)
from ._prepare import (
    compute_split as compute_split,
)
from ._prepare import (
    on_this_node as on_this_node,
)
from ._prepare import (
    resolve_feature_sets as resolve_feature_sets,
)
from ._prepare import (
    start_ray as start_ray,
)
from ._prepare import (
    storage_filesystem as storage_filesystem,
)
from ._prepare import (
    trial_settings as trial_settings,
)
from ._progress import (
    StudyProgress as StudyProgress,
)
from ._progress import (
    results_table as results_table,
)
from ._progress import (
    storage_banner as storage_banner,
)
from ._rescore import (
    rescore_seeds as rescore_seeds,
)
from ._rescore import (
    run_rescore as run_rescore,
)
from ._rescore import (
    top_trials as top_trials,
)
from ._run_files import (
    CONTINUED as CONTINUED,
)
from ._run_files import (
    GRID_FILE as GRID_FILE,
)
from ._run_files import (
    RESCORE_FILE as RESCORE_FILE,
)
from ._run_files import (
    SETTINGS_FILE as SETTINGS_FILE,
)
from ._run_files import (
    experiment_paths as experiment_paths,
)
from ._run_files import (
    read_run_file as read_run_file,
)
from ._run_files import (
    remove_run_file as remove_run_file,
)
from ._run_files import (
    write_run_file as write_run_file,
)
from ._run_lock import (
    LEASE_S as LEASE_S,
)
from ._run_lock import (
    RunLockedError as RunLockedError,
)
from ._run_lock import (
    lock_path as lock_path,
)
from ._run_lock import (
    locked as locked,
)
from ._searcher import (
    CHECKPOINT_LOST as CHECKPOINT_LOST,
)
from ._searcher import (
    DRIVER_LOST as DRIVER_LOST,
)
from ._searcher import (
    FAILURE as FAILURE,
)
from ._searcher import (
    REASON_ATTR as REASON_ATTR,
)
from ._searcher import (
    RETRY_ATTR as RETRY_ATTR,
)
from ._searcher import (
    SAMPLERS as SAMPLERS,
)
from ._searcher import (
    SCHEDULER as SCHEDULER,
)
from ._searcher import (
    STOPPED as STOPPED,
)
from ._searcher import (
    TIME_BUDGET as TIME_BUDGET,
)
from ._searcher import (
    TUNE_ID_ATTR as TUNE_ID_ATTR,
)
from ._searcher import (
    SearchSettingsChangedError as SearchSettingsChangedError,
)
from ._searcher import (
    StudySearcher as StudySearcher,
)
from ._searcher import (
    TuneTrialEnd as TuneTrialEnd,
)
from ._searcher import (
    ask_active as ask_active,
)
from ._searcher import (
    make_sampler as make_sampler,
)
from ._searcher import (
    needs_new_experiment as needs_new_experiment,
)
from ._searcher import (
    prepare_study as prepare_study,
)
from ._searcher import (
    reconcile as reconcile,
)
from ._searcher import (
    sampler_seed as sampler_seed,
)
from ._searcher import (
    startup_trials as startup_trials,
)
from ._selection import (
    OBJECTIVE_ON as OBJECTIVE_ON,
)
from ._selection import (
    SELECTED_ON as SELECTED_ON,
)
from ._selection import (
    SELECTED_WITHOUT_TEST as SELECTED_WITHOUT_TEST,
)
from ._selection import (
    TIE_BREAK as TIE_BREAK,
)
from ._selection import (
    Candidate as Candidate,
)
from ._selection import (
    Constraint as Constraint,
)
from ._selection import (
    NoFiniteTrialError as NoFiniteTrialError,
)
from ._selection import (
    Objective as Objective,
)
from ._selection import (
    final_epochs as final_epochs,
)
from ._selection import (
    pareto_front as pareto_front,
)
from ._selection import (
    select_best as select_best,
)
from ._selection import (
    selected_on as selected_on,
)
from ._study import (
    AllTrialsFailedError as AllTrialsFailedError,
)
from ._study import (
    StudyExistsError as StudyExistsError,
)
from ._study import (
    StudyInterruptedError as StudyInterruptedError,
)
from ._study import (
    StudySettingsChangedError as StudySettingsChangedError,
)
from ._study import (
    run_studies as run_studies,
)
from ._study import (
    run_study as run_study,
)
from ._study import (
    train_in_study as train_in_study,
)
from ._study import (
    train_on_node as train_on_node,
)
from ._trials import (
    StudyResult as StudyResult,
)
from ._trials import (
    TrialRecord as TrialRecord,
)
from ._trials import (
    by_study as by_study,
)
from ._trials import (
    trial_records as trial_records,
)
