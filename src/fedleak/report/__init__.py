"""Run artifacts: image grids and HTML reports."""
