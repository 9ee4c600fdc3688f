"""Ray Data pipeline: decode tasks → Predictor actor pool → per-sample rows."""
