"""One module per `lushpo` verb: its argparse flags and the call into the layers below.

A verb imports what it runs inside its functions, not at the top of its module: `hpo.cli`
imports every verb's module to build the parser, and a module-level `from hpo.search import
run_study` (Ray) or `from hpo.results import export_best` (TensorFlow) would make `lushpo
--help`, `lushpo config` and every other verb pay for them (seconds) before parsing argv.
"""
