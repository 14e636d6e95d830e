"""Studies: TOML grids (``spec``) expanded into runs with stable keys (``keys``), stored as
files (``store``), run by local or Dask executors (``executors``), with per-rule tuning
(``tune``, ``tuning``), by one sweep runner (``sweep``); reports (``analysis``, ``plots``,
``report_tuning``, ``report``) and side-by-side comparison (``compare``)."""
