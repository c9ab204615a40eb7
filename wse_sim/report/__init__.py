"""What a run produced: `SimResult` metrics, text reports, output folders, figures and traces."""
