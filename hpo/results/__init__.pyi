"""What a study produced: the best trial exported with its model card, the evaluation against
the paper, the spatial baseline, the reports and plots, and prediction on new clips. Builds on
`hpo.search` and `hpo.train`; never imports `hpo.cli`."""

from ._baseline import (
    C_GRID as C_GRID,
    INNER_FOLDS as INNER_FOLDS,
    linear_probe as linear_probe,
    temporal_claim as temporal_claim,
)
from ._evaluate import (
    REPORT_JSON as REPORT_JSON,
    REPORT_MD as REPORT_MD,
    evaluate as evaluate,
    load_split_features as load_split_features,
)
from ._export import (
    CARD as CARD,
    ExportError as ExportError,
    ExportResult as ExportResult,
    claim as claim,
    confidence as confidence,
    export_best as export_best,
    export_checkpoint as export_checkpoint,
    export_grid as export_grid,
    fold_predictions as fold_predictions,
    read_card as read_card,
    run_filesystem as run_filesystem,
    spatial_baseline as spatial_baseline,
)
from ._export_folder import (
    MANIFEST as MANIFEST,
    OwnershipError as OwnershipError,
    add_files as add_files,
    owned_files as owned_files,
    publish as publish,
    replacing as replacing,
    swap_in as swap_in,
    target as target,
    writable as writable,
)
from ._paper import (
    PAPER_HEADLINE as PAPER_HEADLINE,
    PaperFormatError as PaperFormatError,
    PaperRow as PaperRow,
    paper_row as paper_row,
    read_evaluation as read_evaluation,
    read_paper_layout as read_paper_layout,
)
from ._paper_table import (
    grid_table as grid_table,
    plot_grid as plot_grid,
    render_grid_markdown as render_grid_markdown,
)
from ._predict import (
    ClipPrediction as ClipPrediction,
    WeightsMismatchError as WeightsMismatchError,
    clip_features as clip_features,
    load_head as load_head,
    predict as predict,
)
from ._report import (
    comparison_rows as comparison_rows,
    comparison_table as comparison_table,
    confidence_section as confidence_section,
    estimates_section as estimates_section,
    plot_confusion as plot_confusion,
    plot_fold_accuracy as plot_fold_accuracy,
    plot_history as plot_history,
    plot_importances as plot_importances,
    render_markdown as render_markdown,
    rescore_table as rescore_table,
)
