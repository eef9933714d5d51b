"""The study as a pipeline: a notebook's stage handle, the runner (the one papermill call, make's
rules), HTML reports, and the study report's data, figures and cost table."""
