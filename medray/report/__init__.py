"""The output contract: ``metrics.json`` (:mod:`~medray.report.document`), ``report.md``
(:mod:`~medray.report.markdown`) and the files (:mod:`~medray.report.writers`).

Nothing is imported here, so that the tasks can use :mod:`medray.report.format`
without importing the report builders that use the tasks.
"""
