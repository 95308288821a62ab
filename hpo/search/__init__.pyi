"""Studies: the YAML config, the objective, our Ray Tune searcher over Optuna's storage, and
the drivers that run one study, a grid of them or nested CV's outer folds as one Ray Tune
experiment, with their run files and locks. Builds on `hpo.train`; never imports
`hpo.results` or `hpo.cli`."""

from ._config import (
    InvalidConfigError as InvalidConfigError,
    StudyConfig as StudyConfig,
    check_extractable as check_extractable,
    config_keys as config_keys,
    from_dict as from_dict,
    load_config as load_config,
)
from ._grid import (
    ONE_EXPERIMENT as ONE_EXPERIMENT,
    cell_configs as cell_configs,
    cell_label as cell_label,
    read_grid as read_grid,
    run_grid as run_grid,
)
from ._nested import (
    NESTED_FILE as NESTED_FILE,
    NestedLeakError as NestedLeakError,
    card_entry as card_entry,
    inner_split as inner_split,
    nested_table as nested_table,
    outer_config as outer_config,
    read_nested as read_nested,
    refit_and_score as refit_and_score,
    run_nested as run_nested,
)
from ._optuna_storage import (
    PASSWORD_ENV as PASSWORD_ENV,
    StoragePasswordError as StoragePasswordError,
    StorageUnreachableError as StorageUnreachableError,
    URL_ENV as URL_ENV,
    connectable as connectable,
    has_study as has_study,
    masked as masked,
    open_storage as open_storage,
    remember as remember,
)
from ._progress import (
    StudyProgress as StudyProgress,
    results_table as results_table,
    storage_banner as storage_banner,
)
from ._rescore import (
    rescore_seeds as rescore_seeds,
    run_rescore as run_rescore,
    top_trials as top_trials,
)
from ._run_files import (
    CONTINUED as CONTINUED,
    GRID_FILE as GRID_FILE,
    RESCORE_FILE as RESCORE_FILE,
    SETTINGS_FILE as SETTINGS_FILE,
    experiment_paths as experiment_paths,
    read_run_file as read_run_file,
    remove_run_file as remove_run_file,
    write_run_file as write_run_file,
)
from ._run_lock import (
    LEASE_S as LEASE_S,
    RunLockedError as RunLockedError,
    lock_path as lock_path,
    locked as locked,
)
from ._searcher import (
    CHECKPOINT_LOST as CHECKPOINT_LOST,
    DRIVER_LOST as DRIVER_LOST,
    FAILURE as FAILURE,
    REASON_ATTR as REASON_ATTR,
    RETRY_ATTR as RETRY_ATTR,
    SAMPLERS as SAMPLERS,
    SCHEDULER as SCHEDULER,
    STOPPED as STOPPED,
    SearchSettingsChangedError as SearchSettingsChangedError,
    StudySearcher as StudySearcher,
    TIME_BUDGET as TIME_BUDGET,
    TUNE_ID_ATTR as TUNE_ID_ATTR,
    TuneTrialEnd as TuneTrialEnd,
    ask_active as ask_active,
    make_sampler as make_sampler,
    needs_new_experiment as needs_new_experiment,
    prepare_study as prepare_study,
    reconcile as reconcile,
    sampler_seed as sampler_seed,
    startup_trials as startup_trials,
)
from ._selection import (
    Candidate as Candidate,
    Constraint as Constraint,
    NoFiniteTrialError as NoFiniteTrialError,
    OBJECTIVE_ON as OBJECTIVE_ON,
    Objective as Objective,
    SELECTED_ON as SELECTED_ON,
    SELECTED_WITHOUT_TEST as SELECTED_WITHOUT_TEST,
    TIE_BREAK as TIE_BREAK,
    final_epochs as final_epochs,
    pareto_front as pareto_front,
    select_best as select_best,
    selected_on as selected_on,
)
from ._study import (
    AllTrialsFailedError as AllTrialsFailedError,
    StudyExistsError as StudyExistsError,
    StudyInterruptedError as StudyInterruptedError,
    StudyResult as StudyResult,
    StudySettingsChangedError as StudySettingsChangedError,
    TrialRecord as TrialRecord,
    run_studies as run_studies,
    run_study as run_study,
    train_in_study as train_in_study,
    train_on_node as train_on_node,
)
