"""What a study produced: the best trial exported with its model card, the evaluation against
the paper, the spatial baseline, the reports and plots, and prediction on new clips. Builds on
`hpo.search` and `hpo.train`; never imports `hpo.cli`."""

from ._baseline import (
    C_GRID as C_GRID,
)
from ._baseline import (
    INNER_FOLDS as INNER_FOLDS,
)
from ._baseline import (
    linear_probe as linear_probe,
)
from ._baseline import (
    temporal_claim as temporal_claim,
)
from ._card import (
    CARD as CARD,
)
from ._card import (
    ExportError as ExportError,
)
from ._card import (
    claim as claim,
)
from ._card import (
    confidence as confidence,
)
from ._card import (
    fold_predictions as fold_predictions,
)
from ._card import (
    read_card as read_card,
)
from ._card import (
    spatial_baseline as spatial_baseline,
)
from ._evaluate import (
    REPORT_JSON as REPORT_JSON,
)
from ._evaluate import (
    REPORT_MD as REPORT_MD,
)
from ._evaluate import (
    evaluate as evaluate,
)
from ._evaluate import (
    load_split_features as load_split_features,
)
from ._export import (
    ExportResult as ExportResult,
)
from ._export import (
    export_best as export_best,
)
from ._export import (
    export_checkpoint as export_checkpoint,
)
from ._export import (
    export_grid as export_grid,
)
from ._export_folder import (
    MANIFEST as MANIFEST,
)
from ._export_folder import (
    OwnershipError as OwnershipError,
)
from ._export_folder import (
    add_files as add_files,
)
from ._export_folder import (
    owned_files as owned_files,
)
from ._export_folder import (
    publish as publish,
)
from ._export_folder import (
    replacing as replacing,
)
from ._export_folder import (
    swap_in as swap_in,
)
from ._export_folder import (
    target as target,
)
from ._export_folder import (
    writable as writable,
)
from ._paper import (
    PAPER_HEADLINE as PAPER_HEADLINE,
)
from ._paper import (
    PaperFormatError as PaperFormatError,
)
from ._paper import (
    PaperRow as PaperRow,
)
from ._paper import (
    paper_row as paper_row,
)
from ._paper import (
    read_evaluation as read_evaluation,
)
from ._paper import (
    read_paper_layout as read_paper_layout,
)
from ._paper_table import (
    grid_table as grid_table,
)
from ._paper_table import (
    plot_grid as plot_grid,
)
from ._paper_table import (
    render_grid_markdown as render_grid_markdown,
)
from ._predict import (
    ClipPrediction as ClipPrediction,
)
from ._predict import (
    WeightsMismatchError as WeightsMismatchError,
)
from ._predict import (
    clip_features as clip_features,
)
from ._predict import (
    load_head as load_head,
)
from ._predict import (
    predict as predict,
)
from ._report import (
    comparison_rows as comparison_rows,
)
from ._report import (
    comparison_table as comparison_table,
)
from ._report import (
    confidence_section as confidence_section,
)
from ._report import (
    estimates_section as estimates_section,
)
from ._report import (
    plot_confusion as plot_confusion,
)
from ._report import (
    plot_fold_accuracy as plot_fold_accuracy,
)
from ._report import (
    plot_history as plot_history,
)
from ._report import (
    plot_importances as plot_importances,
)
from ._report import (
    render_markdown as render_markdown,
)
from ._report import (
    rescore_table as rescore_table,
)
from ._run_reader import (
    run_filesystem as run_filesystem,
)
