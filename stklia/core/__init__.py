"""What every layer uses: user-facing errors (one line naming the file and line), atomic file output, progress
bars, devices, the Hydra configs' helpers, and the start-up every command shares."""
