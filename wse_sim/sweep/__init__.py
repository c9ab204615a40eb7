"""What-if grids: the sweep file, its points run locally or on Dask, the resumable table, plots."""
