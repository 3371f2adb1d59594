"""`python -m stklia.test model_dir=DIR ...`: the same command as `python -m stklia.evaluate`."""

from stklia.evaluate import main

if __name__ == "__main__":
    main()
