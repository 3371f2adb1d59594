"""`python -m stklia.calibrate fit.scores=FILE fit.trials=FILE [apply=[FILE,...] apply_trials=[FILE,...]]`:
scores to calibrated log-likelihood ratios, fitted on one scored trial list, applied to others."""

from stklia.core.command import command
from stklia.evaluation.calibration import calibrate

main = command(calibrate, "commands/calibrate")

if __name__ == "__main__":
    main()
