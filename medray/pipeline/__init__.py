"""The one pipeline of every task: prepare (no Ray) → read → predict → collect → metrics → report.

``prepare`` (driver, before Ray), ``cluster`` (start/connect, device checks, shape),
``stages`` (the two Ray Data stages behind one function), ``predictor`` (the actor),
``execute`` (runs on the cluster: retries, resume parts, shipping, accounting) and
``evaluate`` (the one run a job calls).
"""
