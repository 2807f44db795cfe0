"""The robustness evaluation, one module per concern.

suite        every attack's name, norm, budget and run function; the named lists
runner       `evaluate_model`: the whole suite on the same examples, then the report
per_example  one attack over every batch, PGD-20 over a range of epsilons (the masks)
reporting    the report's numbers: intervals, epsilons as written, AutoAttack's standard list
alarms       the gradient-masking alarms
writers      report.json, report.md, TensorBoard;  plots: the PNGs
references   third-party cross-checks (ART)
resume       finished batches kept on disk, so a long evaluation resumes
commands     `--mode=eval` and the evaluation of an export
"""
