"""Analysis of run directories: load/validate (runs), forgetting curves, R heatmaps, comparison tables,
multi-seed statistics and the report CLI (report.main). Reads results.json only; never runs a model."""
