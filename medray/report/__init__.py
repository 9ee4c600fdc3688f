"""The output contract: ``metrics.json`` (:mod:`~medray.report.document`), ``report.md``
(:mod:`~medray.report.markdown`), ``report.html`` and the files (:mod:`~medray.report.writers`).

The report is built from what the task says (its metrics, sections and plots); it sits
above the tasks and below the composition root (:mod:`medray.config`).
"""
